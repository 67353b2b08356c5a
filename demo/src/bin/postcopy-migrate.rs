//! `postcopy-migrate`: a real postcopy migration of a guest-RAM region between two
//! processes on loopback, through the postcopy-ram library on both sides.
//!
//! The command starts the source; the source starts the destination as a child process
//! (`--role dest`), connects to it over TCP on 127.0.0.1, runs precopy rounds while a
//! workload dirties memory, switches to postcopy, and serves the destination's page
//! requests ahead of its background push. It ends with a summary and a checksum
//! comparison of the destination's memory against what it must be; a mismatch exits 1.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};

use postcopy_demo::checksum::{apply_dest_writes, checksum};
use postcopy_demo::dest::{run_dest, DestOptions, Workload};
use postcopy_demo::latency_split::percentile;
use postcopy_demo::memory::{HugePageReservation, Kind};
use postcopy_demo::source::{run_source, SourceOptions};

const USAGE: &str =
    "usage: postcopy-migrate [--size BYTES[K|M|G]] [--kind anon|memfd|hugetlb] [--threads N]
                        [--kvm] [--precopy-rounds N] [--dirty-threads N] [--bandwidth MiB/s]
                        [--fail-channel-after N] [--abort-postcopy-after N]
                        [--inject-placement-failure N] [--latency-split] [--seed N] [--quiet]

  --size            guest RAM to migrate (default 256M)
  --kind            backing of the destination's guest RAM (default anon)
  --threads         destination threads that fault on guest RAM (default 4)
  --kvm             the destination's workload is a KVM guest running on the migrated RAM
  --precopy-rounds  precopy passes before the switch to postcopy (default 2; 0 = pure
                    postcopy: every page moves after the switch)
  --dirty-threads   source threads dirtying memory during precopy (default 1)
  --bandwidth       rate of the postcopy background push in MiB/s, 0 = unlimited (default 256);
                    requested pages travel on a second connection, ahead of it
  --fail-channel-after N  recovery test: both connections are cut after N postcopy
                    pages; the source reconnects, the destination answers with its
                    received bitmap (RECV_BITMAP), the source re-sends what it lacks, the
                    destination re-sends its pending page requests, and the migration
                    completes (QEMU's postcopy recovery)
  --abort-postcopy-after N  failure test: the source drops its connections after N
                    postcopy pages and never comes back; the destination aborts postcopy
                    (lost pages poisoned), reports how many pages were lost and exits
                    non-zero within a second
  --inject-placement-failure N  failure test: the destination's Nth placement after
                    LISTEN fails (EFAULT); it aborts and exits non-zero within a second
  --latency-split   split each faulted touch's latency at its page's placement: waiting
                    for the page (the request path) and then for a CPU (information)
  --seed            seed of the initial memory content (default 1)
  --quiet           no progress lines
Environment: POSTCOPY_LOG=debug for the library's log.";

#[derive(Debug, Clone)]
struct Args {
    size: usize,
    kind: Kind,
    threads: usize,
    kvm: bool,
    precopy_rounds: usize,
    dirty_threads: usize,
    seed: u64,
    quiet: bool,
    latency_split: bool,
    role_dest: bool,
    bandwidth_mib: u64,
    abort_after: Option<u64>,
    fail_channel_after: Option<u64>,
    inject_placement_failure: Option<u64>,
    recover: bool,
}

fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1usize << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        size: 256 << 20,
        kind: Kind::Anon,
        threads: 4,
        kvm: false,
        precopy_rounds: 2,
        dirty_threads: 1,
        seed: 1,
        quiet: false,
        latency_split: false,
        role_dest: false,
        bandwidth_mib: 256,
        abort_after: None,
        fail_channel_after: None,
        inject_placement_failure: None,
        recover: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--size" => a.size = parse_size(&value("--size")?).ok_or("bad --size")?,
            "--kind" => {
                a.kind = Kind::parse(&value("--kind")?).ok_or("--kind is anon, memfd or hugetlb")?
            }
            "--threads" => a.threads = value("--threads")?.parse().map_err(|_| "bad --threads")?,
            "--kvm" => a.kvm = true,
            "--precopy-rounds" => {
                a.precopy_rounds = value("--precopy-rounds")?
                    .parse()
                    .map_err(|_| "bad --precopy-rounds")?
            }
            "--dirty-threads" => {
                a.dirty_threads = value("--dirty-threads")?
                    .parse()
                    .map_err(|_| "bad --dirty-threads")?
            }
            "--seed" => a.seed = value("--seed")?.parse().map_err(|_| "bad --seed")?,
            "--quiet" => a.quiet = true,
            "--latency-split" => a.latency_split = true,
            "--abort-postcopy-after" => {
                a.abort_after = Some(
                    value("--abort-postcopy-after")?
                        .parse()
                        .map_err(|_| "bad --abort-postcopy-after")?,
                )
            }
            "--fail-channel-after" => {
                a.fail_channel_after = Some(
                    value("--fail-channel-after")?
                        .parse()
                        .map_err(|_| "bad --fail-channel-after")?,
                )
            }
            "--inject-placement-failure" => {
                a.inject_placement_failure = Some(
                    value("--inject-placement-failure")?
                        .parse()
                        .map_err(|_| "bad --inject-placement-failure")?,
                )
            }
            "--recover" => a.recover = true,
            "--bandwidth" => {
                a.bandwidth_mib = value("--bandwidth")?
                    .parse()
                    .map_err(|_| "bad --bandwidth")?
            }
            "--role" => a.role_dest = value("--role")? == "dest",
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.size == 0 || a.size % a.kind.page_size() != 0 {
        return Err(format!(
            "--size must be a non-zero multiple of the {} page size",
            a.kind.page_size()
        ));
    }
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(a)
}

fn dest_main(args: &Args) -> ExitCode {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("[dest] listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "PORT {}",
        listener.local_addr().map(|a| a.port()).unwrap_or(0)
    );
    let _ = std::io::stdout().flush();
    let (stream, urgent) = match (listener.accept(), listener.accept()) {
        (Ok((s, _)), Ok((u, _))) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("[dest] accept: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = DestOptions {
        kind: args.kind,
        size: args.size,
        workload: if args.kvm {
            Workload::Kvm
        } else {
            Workload::Threads(args.threads)
        },
        recover: args.recover,
        inject_placement_failure: args.inject_placement_failure,
        latency_split: args.latency_split,
    };
    match run_dest(&listener, stream, urgent, &opts) {
        Ok(r) => {
            let mut lat = r.fault_latencies_ns.clone();
            lat.sort_unstable();
            let pct = |q: f64| percentile(&lat, q);
            if let Some(t) = r.latency_split {
                println!(
                    "SPLIT split_touches={} split_placed_p50={} split_placed_p99={} split_running_p50={} split_running_p99={}",
                    t.touches, t.placed_p50, t.placed_p99, t.running_p50, t.running_p99
                );
            }
            let s = r.stats;
            let b = &r.blocktime;
            println!(
                "BLOCKTIME thread_id={} total_ms={} vcpus={} lib_faults_timed={} lib_lat_p50={} lib_lat_p99={} lib_lat_max={}",
                b.thread_id_available as u8,
                b.total_ms,
                b.per_vcpu_ms.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
                b.faults_timed,
                b.latency_p50_ns,
                b.latency_p99_ns,
                b.latency_max_ns
            );
            println!(
                "RECOVERY recoveries={} bitmaps={} resent={} paused_faults={}",
                r.recoveries, r.bitmaps_sent, r.resent_requests, s.paused_faults
            );
            println!(
                "REPORT checksum={:x} guest_checksum={} t_run={} t_end={} faulted_touches={} lat_p50={} lat_p99={} lat_max={} \
                 faults={} requests={} duplicate_faults={} late_faults={} placed={} zero_placed={} already_present={} request_errors={}",
                r.checksum,
                r.guest_checksum.map_or("-".to_string(), |c| format!("{c:x}")),
                r.t_run_ns,
                r.t_end_ns,
                lat.len(),
                pct(0.5),
                pct(0.99),
                lat.last().copied().unwrap_or(0),
                s.faults,
                s.requests,
                s.duplicate_faults,
                s.late_faults,
                s.pages_placed,
                s.zero_pages_placed,
                s.already_present,
                s.request_errors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("[dest] {e}");
            ExitCode::FAILURE
        }
    }
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1000.0)
}

fn ms(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn source_main(args: &Args) -> Result<bool, String> {
    if args.kvm {
        postcopy_demo::kvm::kvm_available().map_err(|e| format!("--kvm: {e}"))?;
    }
    postcopy_ram::sys::uffd::probe().map_err(|e| format!("this host cannot do postcopy: {e}"))?;
    let _huge = match args.kind {
        Kind::Hugetlb => Some(HugePageReservation::reserve(
            (args.size / (2 << 20)) as u64,
        )?),
        _ => None,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--role",
            "dest",
            "--size",
            &args.size.to_string(),
            "--kind",
            args.kind.name(),
        ])
        .args(["--threads", &args.threads.to_string()])
        .args(if args.latency_split {
            &["--latency-split"][..]
        } else {
            &[][..]
        })
        .args(if args.kvm { &["--kvm"][..] } else { &[][..] })
        .args(if args.fail_channel_after.is_some() {
            &["--recover"][..]
        } else {
            &[][..]
        })
        .args(
            args.inject_placement_failure
                .map(|n| vec!["--inject-placement-failure".to_string(), n.to_string()])
                .unwrap_or_default(),
        )
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the destination: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let port: u16 = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()))
        .ok_or("the destination did not report its port")?;
    let connect = || {
        TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connecting to the destination: {e}"))
    };
    let stream = connect()?;
    let urgent = connect()?;
    let opts = SourceOptions {
        kind: args.kind,
        size: args.size,
        precopy_rounds: args.precopy_rounds,
        dirty_threads: args.dirty_threads,
        seed: args.seed,
        progress: !args.quiet,
        postcopy_bandwidth: args.bandwidth_mib << 20,
        abort_after_pages: args.abort_after,
        fail_channel_after: args.fail_channel_after,
        port,
    };
    if !args.quiet {
        eprintln!(
            "[source] migrating {} MiB of {} memory, destination workload: {}",
            args.size >> 20,
            args.kind.name(),
            if args.kvm {
                "KVM guest".to_string()
            } else {
                format!("{} threads", args.threads)
            }
        );
    }
    let result = run_source(stream, urgent, &opts);
    let mut extra: Vec<String> = Vec::new();
    let report_line = lines.find_map(|l| {
        let l = l.ok()?;
        if l.starts_with("REPORT ") {
            return Some(l);
        }
        extra.push(l);
        None
    });
    let status = child.wait().map_err(|e| e.to_string())?;
    let (src, mem) = match result {
        Ok(r) => r,
        Err(e) => {
            drop(lines);
            return Err(format!("{e}; destination exit status: {status}"));
        }
    };
    let line = report_line.ok_or_else(|| format!("the destination failed ({status})"))?;
    let mut dest: HashMap<&str, &str> = HashMap::new();
    for l in extra.iter().chain(std::iter::once(&line)) {
        if let Some((_, kvs)) = l.split_once(' ') {
            dest.extend(kvs.split(' ').filter_map(|kv| kv.split_once('=')));
        }
    }
    let num = |k: &str| dest.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);

    // What the destination's memory must be: the source's final memory plus the
    // destination workload's own writes.
    // SAFETY: the source's workload stopped at the switch; nothing writes its memory now.
    let final_mem = unsafe { std::slice::from_raw_parts_mut(mem.addr(), mem.len()) };
    let guest_expected = args
        .kvm
        .then(|| postcopy_demo::kvm::reference_checksum(final_mem));
    if args.kvm {
        postcopy_demo::kvm::apply_guest_writes(final_mem);
    } else {
        apply_dest_writes(final_mem);
    }
    let expected = format!("{:x}", checksum(final_mem));
    let got = dest.get("checksum").copied().unwrap_or("?");
    let mut ok = status.success() && got == expected && src.shut_failed == Some(false);

    let total = src.t_done_ns.max(num("t_end")) - src.t_start_ns;
    println!("\n=== postcopy migration summary ===");
    println!(
        "guest RAM              {} MiB, {} pages of {} KiB ({})",
        args.size >> 20,
        args.size / args.kind.page_size(),
        args.kind.page_size() >> 10,
        args.kind.name()
    );
    println!(
        "precopy                {:.1} MiB in {} pages over {} rounds ({} dirtying writes)",
        src.precopy_bytes as f64 / 1048576.0,
        src.precopy_pages,
        args.precopy_rounds,
        src.dirtied_writes
    );
    println!(
        "discard                {} host pages in {} ranges, {} commands",
        src.discarded_pages / (args.kind.page_size() / 4096) as u64,
        src.discard_ranges,
        src.discard_commands
    );
    println!("postcopy               {:.1} MiB: {} pages requested, {} pushed ({} requests for pages already sent)", src.postcopy_bytes as f64 / 1048576.0, src.pages_requested, src.pages_pushed, src.requests_already_sent);
    println!("destination library    {} faults, {} requests, {} duplicate faults, {} late faults, {} placed, {} zero, {} EEXIST, {} request errors", num("faults"), num("requests"), num("duplicate_faults"), num("late_faults"), num("placed"), num("zero_placed"), num("already_present"), num("request_errors"));
    if args.kvm {
        let guest = dest.get("guest_checksum").copied().unwrap_or("?");
        let want = format!("{:x}", guest_expected.unwrap_or(0));
        println!(
            "KVM guest checksum     {guest} (expected {want}) {}",
            if guest == want { "MATCH" } else { "MISMATCH" }
        );
        ok &= guest == want;
    } else {
        println!(
            "fault latency          p50 {}  p99 {}  max {}  ({} touches faulted)",
            us(num("lat_p50")),
            us(num("lat_p99")),
            us(num("lat_max")),
            num("faulted_touches")
        );
    }
    if dest.contains_key("split_touches") {
        println!(
            "fault latency split    touch -> page placed p50 {}  p99 {}; placed -> running again p50 {}  p99 {}  ({} touches)",
            us(num("split_placed_p50")),
            us(num("split_placed_p99")),
            us(num("split_running_p50")),
            us(num("split_running_p99")),
            num("split_touches")
        );
    }
    let vcpus = dest.get("vcpus").copied().unwrap_or("");
    println!(
        "blocktime              total {} ms (all {} {} blocked at once), per {}: [{}] ms{}",
        num("total_ms"),
        if args.kvm {
            "vCPUs"
        } else {
            "faulting threads"
        },
        vcpus.split(',').filter(|v| !v.is_empty()).count(),
        if args.kvm { "vCPU" } else { "thread" },
        vcpus.replace(',', ", "),
        if num("thread_id") == 1 {
            ""
        } else {
            " (kernel without UFFD_FEATURE_THREAD_ID: not attributed)"
        }
    );
    println!(
        "library fault latency  p50 {}  p99 {}  max {}  ({} faults, fault read -> page placed, log2 buckets)",
        us(num("lib_lat_p50")),
        us(num("lib_lat_p99")),
        us(num("lib_lat_max")),
        num("lib_faults_timed")
    );
    if src.recoveries > 0 {
        println!(
            "recovery               {} (channels cut after {} postcopy pages): resumed in {}, received bitmap lacked {} pages (re-sent), {} pending requests re-sent, {} faults while paused",
            src.recoveries,
            args.fail_channel_after.unwrap_or(0),
            ms(src.recovery_ns),
            src.recovery_missing_pages,
            num("resent"),
            num("paused_faults")
        );
        ok &= num("recoveries") == src.recoveries;
    }
    println!(
        "downtime               {} (source stopped -> destination running)",
        ms(num("t_run").saturating_sub(src.t_stop_ns))
    );
    println!(
        "migration time         {} (source memory ready -> destination done)",
        ms(src.t_done_ns.max(num("t_end")) - src.t_migrate_ns)
    );
    println!(
        "total time             {} (with creating and filling the source's memory)",
        ms(total)
    );
    println!(
        "memory checksum        destination {got}, expected {expected}: {}",
        if got == expected { "MATCH" } else { "MISMATCH" }
    );
    println!(
        "result                 {}",
        if ok { "OK" } else { "FAILED" }
    );
    Ok(ok)
}

fn main() -> ExitCode {
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_env(env_logger::Env::new().filter("POSTCOPY_LOG"))
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.role_dest {
        return dest_main(&args);
    }
    match source_main(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("postcopy-migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
