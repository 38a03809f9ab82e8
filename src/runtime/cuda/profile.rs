//! Where a step's time goes on the GPU (`CACTUS_PROFILE=1`): every device op, every host copy
//! and every backward node waits for the stream when it ends and adds its wall time to a table
//! ([`report`]). Waiting serialises the GPU and the host, so the profiled step is slower than an
//! unprofiled one: the table is for shares, not for totals. Scopes nest (a step's scope includes
//! its ops'), so columns do not add up to the step.

use crate::runtime::cuda::context::cuda;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static TABLE: Mutex<Option<HashMap<String, (u64, Duration)>>> = Mutex::new(None);

/// Whether `CACTUS_PROFILE` is set (to anything but 0 or the empty string).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("CACTUS_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// Times from its creation to its drop, once the stream is idle.
pub struct Scope {
    name: String,
    start: Instant,
}

/// A scope named `name` when profiling (waits for the stream first, so earlier work is not
/// billed to it), else nothing.
pub fn scope(name: &str) -> Option<Scope> {
    enabled().then(|| {
        wait();
        Scope {
            name: name.to_string(),
            start: Instant::now(),
        }
    })
}

/// A closure's type name without the crate prefix and the closure suffix, as a scope name:
/// `ops::conv::cuda::conv2d` for the backward of the GPU convolution.
pub fn short_name(type_name: &str) -> &str {
    let s = type_name.strip_prefix("cactus::").unwrap_or(type_name);
    s.split("::{{closure}}").next().unwrap_or(s)
}

fn wait() {
    if let Ok(b) = cuda() {
        let _ = b.synchronize();
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        wait();
        record(&self.name, self.start.elapsed());
    }
}

/// Add one call of `name` taking `elapsed`.
pub fn record(name: &str, elapsed: Duration) {
    let mut table = TABLE.lock().expect("profile lock");
    let entry = table
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_default();
    entry.0 += 1;
    entry.1 += elapsed;
}

/// Forget what was recorded.
pub fn reset() {
    *TABLE.lock().expect("profile lock") = None;
}

/// The table, longest total first: name, calls, total ms, ms per call.
pub fn report() -> String {
    let table = TABLE.lock().expect("profile lock");
    let mut rows: Vec<(&String, &(u64, Duration))> = table
        .as_ref()
        .map(|t| t.iter().collect())
        .unwrap_or_default();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
    let mut out = format!(
        "{:<60} {:>7} {:>10} {:>10}\n",
        "scope", "calls", "total ms", "ms/call"
    );
    for (name, (calls, total)) in rows {
        let ms = total.as_secs_f64() * 1e3;
        out += &format!(
            "{name:<60} {calls:>7} {ms:>10.3} {:>10.4}\n",
            ms / *calls as f64
        );
    }
    out
}
