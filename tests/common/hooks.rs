//! Configurable hooks for the capability tests: a request callback chosen per test, and a
//! record of every request, SHUT and fault-thread start/stop.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use postcopy_ram::destination::block::BlockEntry;
use postcopy_ram::{BlockName, Incoming, IncomingConfig, IncomingHooks, RamBlock, Result};

use super::page_pattern;

/// A request as the hooks saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// The name sent (None: same block as the previous request).
    pub named: Option<String>,
    /// The block it belongs to (always known).
    pub block: String,
    pub offset: u64,
    pub length: u64,
    pub opaque: usize,
}

/// What a request callback decides.
pub type OnRequest = dyn Fn(&TestHooks, &Req) -> std::result::Result<(), i32> + Send + Sync;

pub struct TestHooks {
    pub blocks: Mutex<Vec<RamBlock>>,
    pub incoming: Mutex<Weak<Incoming>>,
    pub requests: Mutex<Vec<Req>>,
    pub on_request: Mutex<Arc<OnRequest>>,
    pub started: Mutex<Vec<String>>,
    pub stopping: Mutex<Vec<String>>,
    pub shuts: Mutex<Vec<bool>>,
}

/// Serves a request at once from the calling thread with [`page_pattern`] content.
pub fn serve(h: &TestHooks, r: &Req) -> std::result::Result<(), i32> {
    h.place(&r.block, r.offset, r.length)
        .map(|_| ())
        .map_err(|e| e.errno())
}

impl TestHooks {
    /// Hooks over `blocks` whose requests are answered by `on_request`.
    pub fn new(blocks: Vec<RamBlock>, on_request: Arc<OnRequest>) -> Arc<TestHooks> {
        Arc::new(TestHooks {
            blocks: Mutex::new(blocks),
            incoming: Mutex::new(Weak::new()),
            requests: Mutex::new(Vec::new()),
            on_request: Mutex::new(on_request),
            started: Mutex::new(Vec::new()),
            stopping: Mutex::new(Vec::new()),
            shuts: Mutex::new(Vec::new()),
        })
    }

    /// Hooks that serve every request at once.
    pub fn serving(blocks: Vec<RamBlock>) -> Arc<TestHooks> {
        Self::new(blocks, Arc::new(serve))
    }

    pub fn incoming(self: &Arc<Self>, config: IncomingConfig) -> Arc<Incoming> {
        let incoming = Arc::new(Incoming::new(self.clone(), config).unwrap());
        *self.incoming.lock() = Arc::downgrade(&incoming);
        incoming
    }

    pub fn set_on_request(&self, f: Arc<OnRequest>) {
        *self.on_request.lock() = f;
    }

    pub fn get(&self) -> Arc<Incoming> {
        self.incoming.lock().upgrade().expect("incoming alive")
    }

    /// Places the page of `block` at `offset` with its pattern.
    pub fn place(&self, block: &str, offset: u64, length: u64) -> Result<postcopy_ram::Placement> {
        let host = self
            .blocks
            .lock()
            .iter()
            .find(|b| b.name == block)
            .expect("known block")
            .host;
        let mut page = vec![0u8; length as usize];
        page_pattern(block, offset, &mut page);
        // SAFETY: `page` holds `length` bytes.
        unsafe {
            self.get()
                .place_page(host + offset as usize, page.as_ptr(), length)
        }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().clone()
    }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_owned()
}

impl IncomingHooks for TestHooks {
    fn ram_blocks(&self) -> Result<Vec<RamBlock>> {
        Ok(self.blocks.lock().clone())
    }

    fn request_page(&self, _: Option<&BlockName>, _: u64, _: u64) -> std::result::Result<(), i32> {
        unreachable!("request_page_in is overridden")
    }

    fn request_page_in(
        &self,
        entry: &BlockEntry,
        named: bool,
        offset: u64,
        length: u64,
    ) -> std::result::Result<(), i32> {
        let req = Req {
            named: named.then(|| entry.name.as_str().to_owned()),
            block: entry.block.name.clone(),
            offset,
            length,
            opaque: entry.block.opaque,
        };
        let f = self.on_request.lock().clone();
        let r = f(self, &req);
        if r.is_ok() {
            self.requests.lock().push(req);
        }
        r
    }

    fn fault_thread_started(&self) {
        self.started.lock().push(thread_name());
    }

    fn fault_thread_stopping(&self, _: Option<postcopy_ram::FaultThreadFailure>) {
        self.stopping.lock().push(thread_name());
    }

    fn shut(&self, failed: bool) {
        self.shuts.lock().push(failed);
    }
}
