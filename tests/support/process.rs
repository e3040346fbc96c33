//! Child processes of tests and benches: sampling a process's CPU time and
//! peak RSS from /proc while it runs, sending signals (asking worker
//! replicas to stop) and waiting for a clean exit.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

/// /proc/{pid}/stat counts CPU time in clock ticks, USER_HZ = 100 on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What /proc showed of a process while it ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// VmHWM: the highest resident set size.
    pub peak_rss_kib: u64,
    /// Voluntary plus involuntary context switches of the process's threads
    /// (those alive at the last reading: the runtime's threads live as long
    /// as the process).
    pub context_switches: u64,
}

impl ProcUsage {
    /// Folds in one reading of /proc/{pid}. Both figures only grow, so a
    /// reading that fails (the process is exiting) keeps the earlier ones.
    pub fn sample(&mut self, pid: u32) {
        if let Some(cpu_seconds) = cpu_seconds(pid) {
            self.cpu_seconds = self.cpu_seconds.max(cpu_seconds);
        }
        if let Some(peak_rss_kib) = peak_rss_kib(pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(peak_rss_kib);
        }
        if let Some(switches) = context_switches(pid) {
            self.context_switches = self.context_switches.max(switches);
        }
    }
}

/// The sum of `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches`
/// over /proc/{pid}/task/*/status.
fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// utime + stime, fields 14 and 15 of /proc/{pid}/stat; counted after the
/// `)` that closes the command name, which may itself contain spaces.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    if fields.len() <= 13 {
        return None;
    }
    let utime: f64 = fields[11].parse().unwrap_or(0.0);
    let stime: f64 = fields[12].parse().unwrap_or(0.0);
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Samples /proc every 20 ms until `child` exits, calling `on_tick` before
/// each sample; the last sample is within 20 ms of the exit.
pub async fn watch_until_exit(
    child: &mut Child,
    mut on_tick: impl FnMut(),
) -> (ExitStatus, ProcUsage) {
    let pid = child.id().expect("pid");
    let mut usage = ProcUsage::default();
    loop {
        on_tick();
        usage.sample(pid);
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, usage);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Asks every replica to drain and stop (SIGTERM); the caller waits. Best
/// effort: a replica that already exited is passed over.
pub fn send_sigterm(replicas: &[Child]) {
    for replica in replicas {
        if let Some(pid) = replica.id() {
            let _ = kill(pid, "TERM");
        }
    }
}

/// Sends `signal` (a name: `TERM`, `INT`, ...) to a running child; the
/// signal must be delivered.
pub fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the child is still running");
    assert!(kill(pid, signal), "kill -{signal} {pid} failed");
}

/// Asks one running worker to drain and stop (SIGTERM), which must be
/// delivered; see [`exits_zero_within`].
pub fn sigterm(child: &Child) {
    send_signal(child, "TERM");
}

/// Waits for `child` to exit, which it must do within `limit` and with
/// status 0.
pub async fn exits_zero_within(child: &mut Child, limit: Duration) {
    let status = tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process did not exit within {limit:?}"))
        .expect("wait");
    assert!(status.success(), "the process exited {status}");
}

fn kill(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}
