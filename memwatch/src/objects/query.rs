//! `/objects`'s query string.

/// `?pid=N&limit=N&format=json|text&since=SECONDS`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectsQuery {
    pub pid: u32,
    pub limit: usize,
    pub text: bool,
    pub since: Option<f64>,
}

pub fn parse_query(raw: Option<&str>, wants_text: bool) -> Result<ObjectsQuery, String> {
    let (mut pid, mut q) = (
        None,
        ObjectsQuery {
            pid: 0,
            limit: 50,
            text: wants_text,
            since: None,
        },
    );
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "pid" => {
                pid = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&p: &u32| p > 0)
                        .ok_or_else(|| format!("invalid pid {value:?}"))?,
                )
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|&l: &usize| (1..=100_000).contains(&l))
                    .ok_or_else(|| format!("invalid limit {value:?}: expected 1 to 100000 types"))?
            }
            "format" => {
                q.text = match value {
                    "json" => false,
                    "text" => true,
                    _ => return Err(format!("invalid format {value:?}: expected json or text")),
                }
            }
            "since" => {
                q.since = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or_else(|| format!("invalid since {value:?}: expected a number of seconds"))?,
                )
            }
            _ => return Err(format!("unknown parameter {key:?} (pid, limit, format, since)")),
        }
    }
    q.pid = pid.ok_or("pid is required: /objects?pid=PID")?;
    Ok(q)
}
