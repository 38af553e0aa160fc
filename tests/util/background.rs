//! An `ldsync` started in the background (`sync` or the `run` daemon) that a test signals, kills or waits for,
//! its standard error going to a file the test can read while it runs; and waiting for what a test can see
//! happen (a log line, a request, a file) rather than for a stretch of wall-clock time.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::Project;

/// How long a test waits for something that should happen at once; only a broken build ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Background {
    pub child: Child,
    log: PathBuf,
}

impl Background {
    /// Starts `ldsync ARGS` on fixture day `day` with `token`, its log in `<project>/<command>.log`.
    pub fn start(project: &Project, day: &str, token: &str, args: &[&str]) -> Background {
        let log = project.path(&format!("{}.log", args[0]));
        let child = project
            .command(day, args)
            .env("LD_ACCESS_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Background { child, log }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for it to exit, at most `limit`; its exit code.
    pub fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > limit {
                self.child.kill().unwrap();
                panic!(
                    "ldsync did not exit within {limit:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `condition` every 20 ms until it holds; fails after `limit`, showing the log.
    pub fn wait_until(&self, limit: Duration, what: &str, condition: impl Fn() -> bool) {
        let started = Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < limit,
                "timed out waiting until {what}; ldsync's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until its log holds `line`.
    pub fn wait_for_log(&self, line: &str) {
        self.wait_until(PATIENCE, &format!("the log says {line:?}"), || {
            self.log().contains(line)
        });
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
