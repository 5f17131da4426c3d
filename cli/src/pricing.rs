//! What a retained version costs per day: its tasks × its task definition's CPU and memory, at
//! a Fargate price table.
//!
//! The built-in table is AWS's Fargate on-demand list price for US East (N. Virginia), Linux,
//! as published on <https://aws.amazon.com/fargate/pricing/> (read March 2026): x86_64
//! $0.04048 per vCPU-hour and $0.004445 per GB-hour, ARM64 $0.03238 per vCPU-hour and
//! $0.00356 per GB-hour. Other regions, Savings Plans and Spot differ: `skewguard status
//! --prices FILE` (JSON, the shape of [`PriceTable`]) or `--vcpu-hour`/`--gb-hour` replace it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Hours in a day: the costs are per day.
const HOURS_PER_DAY: f64 = 24.0;

/// The price of one vCPU-hour and one GB-hour of memory, in USD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    pub vcpu_hour: f64,
    pub gb_hour: f64,
}

/// Fargate prices by CPU architecture, and where they come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PriceTable {
    /// Where the prices come from, shown with the costs.
    pub source: String,
    /// `X86_64` tasks (and tasks that name no architecture).
    #[serde(rename = "x86_64")]
    pub x86_64: Rate,
    /// `ARM64` tasks; the x86_64 rate if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm64: Option<Rate>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            source: "AWS Fargate list price, US East (N. Virginia), Linux, on demand (aws.amazon.com/fargate/pricing, March 2026)".to_owned(),
            x86_64: Rate {
                vcpu_hour: 0.04048,
                gb_hour: 0.004445,
            },
            arm64: Some(Rate {
                vcpu_hour: 0.03238,
                gb_hour: 0.00356,
            }),
        }
    }
}

/// The size of one task, from its task definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSize {
    /// CPU units (1024 = 1 vCPU), the task definition's `cpu`.
    pub cpu_units: u32,
    /// MiB, the task definition's `memory`.
    pub memory_mib: u32,
    /// `runtimePlatform.cpuArchitecture` (`X86_64`, `ARM64`), if set.
    pub architecture: Option<String>,
}

impl PriceTable {
    /// Reads a table from a JSON file.
    ///
    /// Errors: the file cannot be read, or is not a price table (message says which).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read price table {}: {e}", path.display()))?;
        let table: PriceTable = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a price table ({e}); expected {{\"source\": \"...\", \"x86_64\": {{\"vcpuHour\": 0.04048, \"gbHour\": 0.004445}}, \"arm64\": {{...}}}}",
                path.display()
            )
        })?;
        table.validate()?;
        Ok(table)
    }

    /// The table with its x86_64 and ARM64 rates replaced where the flags say.
    pub fn overridden(
        mut self,
        vcpu_hour: Option<f64>,
        gb_hour: Option<f64>,
    ) -> Result<Self, String> {
        if vcpu_hour.is_none() && gb_hour.is_none() {
            return Ok(self);
        }
        for rate in std::iter::once(&mut self.x86_64).chain(self.arm64.as_mut()) {
            if let Some(v) = vcpu_hour {
                rate.vcpu_hour = v;
            }
            if let Some(g) = gb_hour {
                rate.gb_hour = g;
            }
        }
        self.source = "prices given on the command line".to_owned();
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), String> {
        let ok = |r: &Rate| {
            [r.vcpu_hour, r.gb_hour]
                .iter()
                .all(|p| p.is_finite() && *p >= 0.0)
        };
        if ok(&self.x86_64) && self.arm64.as_ref().is_none_or(ok) {
            Ok(())
        } else {
            Err("prices must be finite and not negative".to_owned())
        }
    }

    /// What `tasks` tasks of `size` cost per day, in USD.
    pub fn cost_per_day(&self, tasks: u32, size: &TaskSize) -> f64 {
        let rate = match size.architecture.as_deref() {
            Some(arch) if arch.eq_ignore_ascii_case("ARM64") => self.arm64.unwrap_or(self.x86_64),
            _ => self.x86_64,
        };
        let vcpu = f64::from(size.cpu_units) / 1024.0;
        let gb = f64::from(size.memory_mib) / 1024.0;
        f64::from(tasks) * (vcpu * rate.vcpu_hour + gb * rate.gb_hour) * HOURS_PER_DAY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(cpu_units: u32, memory_mib: u32, arch: Option<&str>) -> TaskSize {
        TaskSize {
            cpu_units,
            memory_mib,
            architecture: arch.map(str::to_owned),
        }
    }

    #[test]
    fn a_day_of_fargate_at_list_price() {
        let table = PriceTable::default();
        // 1 vCPU, 2 GB, x86: (0.04048 + 2 × 0.004445) × 24 = $1.18488.
        let one = table.cost_per_day(1, &size(1024, 2048, None));
        assert!((one - 1.18488).abs() < 1e-9, "{one}");
        // Two tasks cost twice as much; none costs nothing.
        assert!((table.cost_per_day(2, &size(1024, 2048, None)) - 2.0 * one).abs() < 1e-9);
        assert_eq!(table.cost_per_day(0, &size(1024, 2048, None)), 0.0);
        // ARM64: (0.25 × 0.03238 + 0.5 × 0.00356) × 24 = $0.23700.
        let arm = table.cost_per_day(1, &size(256, 512, Some("ARM64")));
        assert!((arm - 0.237).abs() < 1e-9, "{arm}");
    }

    #[test]
    fn the_user_can_replace_the_prices() {
        let table = PriceTable::default()
            .overridden(Some(0.05), Some(0.005))
            .unwrap();
        let cost = table.cost_per_day(1, &size(2048, 4096, Some("ARM64")));
        assert!(
            (cost - (2.0 * 0.05 + 4.0 * 0.005) * 24.0).abs() < 1e-9,
            "{cost}"
        );
        assert!(PriceTable::default().overridden(Some(-1.0), None).is_err());

        let dir = std::env::temp_dir().join(format!("skewguard-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prices.json");
        std::fs::write(
            &path,
            r#"{"source": "eu-west-1 list", "x86_64": {"vcpuHour": 0.04456, "gbHour": 0.004865}}"#,
        )
        .unwrap();
        let table = PriceTable::from_file(&path).unwrap();
        assert_eq!(table.source, "eu-west-1 list");
        // No ARM64 rate given: ARM64 tasks are priced at the x86_64 rate.
        let cost = table.cost_per_day(1, &size(1024, 1024, Some("ARM64")));
        assert!((cost - (0.04456 + 0.004865) * 24.0).abs() < 1e-9, "{cost}");
        std::fs::write(&path, r#"{"x86_64": {"vcpu": 1}}"#).unwrap();
        let err = PriceTable::from_file(&path).unwrap_err();
        assert!(err.contains("is not a price table"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
