//! What the benchmarks share.

#![allow(dead_code)] // each benchmark uses a part

pub mod calls;

/// The variable `name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `median (each, in the order run)` of a few runs' figures, with `decimals` decimals;
/// an even count takes the mean of the middle two.
pub fn median(figures: &[f64], decimals: usize) -> String {
    let each: Vec<String> = figures.iter().map(|f| format!("{f:.decimals$}")).collect();
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n % 2 {
        1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    format!("{median:.decimals$} ({})", each.join(", "))
}
