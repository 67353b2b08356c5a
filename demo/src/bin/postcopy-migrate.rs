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
use postcopy_demo::memory::{HugePageReservation, Kind};
use postcopy_demo::source::{run_source, SourceOptions};

const USAGE: &str =
    "usage: postcopy-migrate [--size BYTES[K|M|G]] [--kind anon|memfd|hugetlb] [--threads N]
                        [--kvm] [--precopy-rounds N] [--dirty-threads N] [--bandwidth MiB/s]
                        [--seed N] [--quiet]

  --size            guest RAM to migrate (default 256M)
  --kind            backing of the destination's guest RAM (default anon)
  --threads         destination threads that fault on guest RAM (default 4)
  --kvm             the destination's workload is a KVM guest running on the migrated RAM
  --precopy-rounds  precopy passes before the switch to postcopy (default 2; 0 = pure
                    postcopy: every page moves after the switch)
  --dirty-threads   source threads dirtying memory during precopy (default 1)
  --bandwidth       rate of the postcopy background push in MiB/s, 0 = unlimited (default 256);
                    requested pages travel on a second connection, ahead of it
  --abort-postcopy-after N  failure test: the source drops its connections after N
                    postcopy pages; the destination must report the failure and exit
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
    role_dest: bool,
    bandwidth_mib: u64,
    abort_after: Option<u64>,
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
        role_dest: false,
        bandwidth_mib: 256,
        abort_after: None,
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
            "--abort-postcopy-after" => {
                a.abort_after = Some(
                    value("--abort-postcopy-after")?
                        .parse()
                        .map_err(|_| "bad --abort-postcopy-after")?,
                )
            }
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
    };
    match run_dest(stream, urgent, &opts) {
        Ok(r) => {
            let mut lat = r.fault_latencies_ns.clone();
            lat.sort_unstable();
            let pct = |q: f64| {
                if lat.is_empty() {
                    0
                } else {
                    lat[((lat.len() - 1) as f64 * q).round() as usize]
                }
            };
            let s = r.stats;
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
        .args(if args.kvm { &["--kvm"][..] } else { &[][..] })
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
    let report_line = lines.find_map(|l| l.ok().filter(|l| l.starts_with("REPORT ")));
    let status = child.wait().map_err(|e| e.to_string())?;
    let (src, mem) = match result {
        Ok(r) => r,
        Err(e) => {
            drop(lines);
            return Err(format!("{e}; destination exit status: {status}"));
        }
    };
    let line = report_line.ok_or_else(|| format!("the destination failed ({status})"))?;
    let dest: HashMap<&str, &str> = line["REPORT ".len()..]
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
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
    println!(
        "downtime               {} (source stopped -> destination running)",
        ms(num("t_run").saturating_sub(src.t_stop_ns))
    );
    println!("total time             {}", ms(total));
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
