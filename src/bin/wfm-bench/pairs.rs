//! Two variants measured side by side.

/// Rates of two variants measured in pairs, each pair in the other order
/// than the last (the machine's drift and the first run's cold caches fall
/// on both alike): medians of each, and of the ratios within a pair.
pub struct Pairs {
    pub base: f64,
    pub variant: f64,
    pub ratio: f64,
}

impl Pairs {
    pub async fn measure<F, Fut>(pairs: usize, mut rate: F) -> anyhow::Result<Pairs>
    where
        F: FnMut(bool) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<f64>>,
    {
        let (mut base, mut variant, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs.max(1) {
            let (b, v) = if pair % 2 == 0 {
                let b = rate(false).await?;
                (b, rate(true).await?)
            } else {
                let v = rate(true).await?;
                (rate(false).await?, v)
            };
            base.push(b);
            variant.push(v);
            ratios.push(v / b);
        }
        Ok(Pairs {
            base: median(base),
            variant: median(variant),
            ratio: median(ratios),
        })
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
