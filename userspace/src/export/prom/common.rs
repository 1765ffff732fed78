//! What every Prometheus family file uses: registering a histogram, counter or gauge family
//! in the registry, named in the error when that fails.

use anyhow::{Context as _, Result};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub(super) fn hist(reg: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    reg.register(Box::new(h.clone())).with_context(|| format!("registering {name}"))?;
    Ok(h)
}

pub(super) fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(c.clone())).with_context(|| format!("registering {name}"))?;
    Ok(c)
}

pub(super) fn gauge(reg: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

pub(super) fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

pub(super) fn gauge_vec_int(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    reg.register(Box::new(g.clone())).with_context(|| format!("registering {name}"))?;
    Ok(g)
}
