//! The log on standard error (RUST_LOG, default `warn`), with a level that `inferscope ctl
//! log-level` changes while the daemon runs. inferscope's own operator lines (`inferscope:
//! ...`) are printed whatever the level.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, bail};
use log::{LevelFilter, Log, Metadata, Record};

/// 0: RUST_LOG's filter; else 1 + a `LevelFilter` as usize, for every module.
static OVERRIDE: AtomicUsize = AtomicUsize::new(0);

struct Logger {
    /// Filtered as RUST_LOG says.
    configured: env_logger::Logger,
    /// Filters nothing: the override decides.
    all: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        match OVERRIDE.load(Ordering::Relaxed) {
            0 => self.configured.enabled(m),
            n => (m.level() as usize) < n,
        }
    }

    fn log(&self, r: &Record) {
        match OVERRIDE.load(Ordering::Relaxed) {
            0 => self.configured.log(r),
            n if (r.level() as usize) < n => self.all.log(r),
            _ => {}
        }
    }

    fn flush(&self) {
        self.configured.flush();
    }
}

fn builder() -> env_logger::Builder {
    let mut b = env_logger::Builder::new();
    b.format_timestamp_millis();
    b
}

/// Installs the logger (once, at start).
pub fn init() {
    let configured = {
        let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
        b.format_timestamp_millis();
        b.build()
    };
    let all = builder().filter_level(LevelFilter::Trace).build();
    let max = configured.filter();
    if log::set_boxed_logger(Box::new(Logger { configured, all })).is_ok() {
        log::set_max_level(max);
    }
}

/// The level in use, in words.
pub fn level() -> String {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        _ => log::max_level().to_string().to_lowercase(),
    }
}

/// Sets every module's level (`off`, `error`, `warn`, `info`, `debug`, `trace`), or `default`
/// for RUST_LOG's filter again. Returns the level now in use.
pub fn set_level(level: &str) -> Result<String> {
    if level == "default" {
        OVERRIDE.store(0, Ordering::Relaxed);
        let max = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).build().filter();
        log::set_max_level(max);
        return Ok(self::level());
    }
    let Ok(f) = level.parse::<LevelFilter>() else {
        bail!("log level `{level}`: use off, error, warn, info, debug, trace or default (RUST_LOG's)")
    };
    // `off` is 0 as a LevelFilter: kept apart from "no override" by the + 1.
    OVERRIDE.store(f as usize + 1, Ordering::Relaxed);
    log::set_max_level(f);
    Ok(self::level())
}
