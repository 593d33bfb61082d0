//! Durations as written in configuration: a number and a unit (`250ms`, `5s`, `1.5m`, `2h`;
//! also `ns`, `us`). A bare number is seconds.

/// Parses a duration into nanoseconds, or says what is wrong with it.
pub fn parse_ns(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a duration (expected e.g. `500ms`, `5s`, `2m`)"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a number in duration `{text}`"))?;
    let scale: f64 = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "" | "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(format!(
                "unknown unit `{other}` in duration `{text}` (use ns, us, ms, s, m or h)"
            ));
        }
    };
    let ns = value * scale;
    if !ns.is_finite() || ns >= u64::MAX as f64 {
        return Err(format!("duration `{text}` is too large"));
    }
    Ok(ns.round() as u64)
}

/// Formats nanoseconds for people: `850µs`, `1.25s`, `3m20s`.
pub fn format_ns(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}µs", ns / 1000)
    } else if ns < 1_000_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else if ns < 60_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns < 3_600_000_000_000 {
        let s = ns / 1_000_000_000;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = ns / 60_000_000_000;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_ns("250ms"), Ok(250_000_000));
        assert_eq!(parse_ns("5s"), Ok(5_000_000_000));
        assert_eq!(parse_ns("5"), Ok(5_000_000_000));
        assert_eq!(parse_ns("1.5m"), Ok(90_000_000_000));
        assert_eq!(parse_ns("2h"), Ok(7_200_000_000_000));
        assert_eq!(parse_ns("10us"), Ok(10_000));
        assert_eq!(parse_ns(" 7ns "), Ok(7));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(parse_ns("").unwrap_err().contains("not a duration"));
        assert!(parse_ns("ms").unwrap_err().contains("not a duration"));
        assert!(parse_ns("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_ns("1.2.3s").unwrap_err().contains("not a number"));
        assert!(parse_ns("1e30h").is_err());
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_ns(850_000), "850µs");
        assert_eq!(format_ns(1_250_000_000), "1.25s");
        assert_eq!(format_ns(200_000_000_000), "3m20s");
        assert_eq!(format_ns(7_300_000_000_000), "2h01m");
    }
}
