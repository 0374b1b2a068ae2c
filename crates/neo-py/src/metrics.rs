//! The client process's metrics: the Rust client's round trips and the
//! cache's counters. The cache counts under its own lock as it goes; its
//! figures are read once per scrape, so metrics add nothing to a load.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::cache::Cache;

/// Encodes the cache's figures at each scrape.
pub struct CacheCollector(pub Arc<Cache>);

impl fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.0.stats();
        let counters = [
            (
                "neo_client_cache_hits",
                "Loads served by the cache",
                stats.hits,
            ),
            (
                "neo_client_cache_misses",
                "Loads the cache could not serve (asked of a storage)",
                stats.misses,
            ),
        ];
        for (name, help, value) in counters {
            encode(&mut encoder, name, help, None, ConstCounter::new(value))?;
        }
        let gauges = [
            (
                "neo_client_cache_entries",
                "Revisions in the cache",
                None,
                stats.entries,
            ),
            (
                "neo_client_cache_size",
                "Data held by the cache",
                Some(Unit::Bytes),
                stats.size,
            ),
            (
                "neo_client_cache_budget",
                "Most data the cache holds (cache_size)",
                Some(Unit::Bytes),
                stats.budget,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            encode(&mut encoder, name, help, unit.as_ref(), gauge)?;
        }
        Ok(())
    }
}

fn encode(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> Result<(), fmt::Error> {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}
