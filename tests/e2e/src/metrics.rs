//! Reading the services' `/metrics` (OpenMetrics text) in tests.

use std::collections::BTreeMap;

/// The labels of one sample.
pub type Labels = BTreeMap<String, String>;

/// `GET <service>/metrics`, as text.
///
/// # Panics
///
/// When the service does not answer.
pub async fn scrape(client: &reqwest::Client, service: &str) -> String {
    client
        .get(format!("{service}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|error| panic!("GET {service}/metrics: {error}"))
        .text()
        .await
        .unwrap_or_else(|error| panic!("GET {service}/metrics: {error}"))
}

/// Every sample of metric `name` in `text`: its labels and value. Label
/// values are taken as written (the services' values have no escapes).
pub fn samples(text: &str, name: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => {
                    let (labels, value) = rest.split_once("} ")?;
                    (parse_labels(labels), value)
                }
                None => (Labels::new(), rest.strip_prefix(' ')?),
            };
            let value = value.split(' ').next()?.parse().ok()?;
            Some((labels, value))
        })
        .collect()
}

fn parse_labels(text: &str) -> Labels {
    text.split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labelled_and_plain_samples_of_one_metric_only() {
        let text = "# TYPE a gauge\n\
                    a{topic=\"t-1\",partition=\"0\"} 3\n\
                    a{topic=\"t-2\",partition=\"1\"} 4.5\n\
                    a_total 9\n\
                    b 1\n";
        let found = samples(text, "a");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0["topic"], "t-1");
        assert_eq!(found[0].0["partition"], "0");
        assert_eq!(found[1].1, 4.5);
        assert_eq!(samples(text, "b"), vec![(Labels::new(), 1.0)]);
    }
}
