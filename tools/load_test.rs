//! A bounded HTTP load generator for `serve`: at each concurrency, that many clients send
//! the same image back to back over keep-alive connections for a fixed time (a closed
//! loop: never more requests in flight than clients); then throughput, latency
//! percentiles, and the server's mean batch size (from its `/metrics`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Load-test a running `serve`: throughput and p50/p90/p99 latency at several concurrencies"
)]
struct Args {
    /// The server, e.g. http://127.0.0.1:8080 (loopback is what this tool is for).
    #[arg(long)]
    url: String,
    /// Route to POST to.
    #[arg(long, default_value = "/v1/detect")]
    route: String,
    /// Image to send (JPEG or PNG).
    #[arg(long)]
    image: PathBuf,
    /// Resize the image to WIDTHxHEIGHT and send it as JPEG (quality 90).
    #[arg(long)]
    resize: Option<String>,
    /// Concurrencies to run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Seconds of measurement per concurrency.
    #[arg(long, default_value_t = 15.0)]
    duration_s: f64,
    /// Seconds of unmeasured load before each measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// A label for the table's first column (e.g. the server's batching setting).
    #[arg(long, default_value = "")]
    label: String,
}

struct Sample {
    seconds: f64,
    ok: bool,
}

/// `candletron_batch_size` sum and count from `/metrics`.
fn batch_counters(agent: &ureq::Agent, url: &str) -> Result<(f64, f64)> {
    let text = agent
        .get(format!("{url}/metrics"))
        .call()
        .context("GET /metrics")?
        .body_mut()
        .read_to_string()?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value("candletron_batch_size_sum "),
        value("candletron_batch_size_count "),
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs `clients` closed-loop clients for `seconds`; their samples.
fn run(
    agent: &ureq::Agent,
    target: &str,
    content_type: &str,
    body: &[u8],
    clients: usize,
    seconds: f64,
) -> Vec<Sample> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut samples = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        let ok = match agent
                            .post(target)
                            .header("Content-Type", content_type)
                            .send(body)
                        {
                            Ok(mut r) => {
                                let status = r.status().as_u16();
                                r.body_mut().read_to_vec().is_ok() && status == 200
                            }
                            Err(_) => false,
                        };
                        samples.push(Sample {
                            seconds: t.elapsed().as_secs_f64(),
                            ok,
                        });
                    }
                    samples
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let url = args.url.trim_end_matches('/').to_string();
    if !url.starts_with("http://") {
        bail!("--url must be http://HOST:PORT, got {url}");
    }
    if args.concurrency.iter().any(|&c| c == 0 || c > 1024) {
        bail!("--concurrency values must be in 1..=1024");
    }
    let duration_ok = args.duration_s > 0.0 && args.duration_s <= 3600.0;
    if !duration_ok || !(0.0..=600.0).contains(&args.warmup_s) {
        bail!("--duration-s must be in (0, 3600] and --warmup-s in [0, 600]");
    }
    let raw = std::fs::read(&args.image)
        .with_context(|| format!("cannot read {}", args.image.display()))?;
    let (body, content_type) = match &args.resize {
        Some(size) => {
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                .filter(|&(w, h)| w > 0 && h > 0)
                .with_context(|| format!("--resize must be WIDTHxHEIGHT, got {size}"))?;
            let img = image::load_from_memory(&raw)
                .with_context(|| format!("cannot decode {}", args.image.display()))?
                .resize_exact(w, h, image::imageops::FilterType::Triangle)
                .to_rgb8();
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img)?;
            (jpeg, "image/jpeg")
        }
        None => {
            let ct = match image::guess_format(&raw) {
                Ok(image::ImageFormat::Png) => "image/png",
                Ok(image::ImageFormat::Jpeg) => "image/jpeg",
                _ => bail!("{} is neither JPEG nor PNG", args.image.display()),
            };
            (raw, ct)
        }
    };
    let max_clients = args.concurrency.iter().copied().max().unwrap_or(1);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(max_clients)
        .max_idle_connections_per_host(max_clients)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let target = format!("{url}{}", args.route);
    println!(
        "| setting | concurrency | requests | errors | throughput (img/s) | p50 (ms) | p90 (ms) | p99 (ms) | mean batch |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &clients in &args.concurrency {
        if args.warmup_s > 0.0 {
            run(&agent, &target, content_type, &body, clients, args.warmup_s);
        }
        let (sum0, count0) = batch_counters(&agent, &url)?;
        let start = Instant::now();
        let samples = run(
            &agent,
            &target,
            content_type,
            &body,
            clients,
            args.duration_s,
        );
        let elapsed = start.elapsed().as_secs_f64();
        let (sum1, count1) = batch_counters(&agent, &url)?;
        let errors = samples.iter().filter(|s| !s.ok).count();
        let mut ok: Vec<f64> = samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.seconds * 1e3)
            .collect();
        ok.sort_by(f64::total_cmp);
        let mean_batch = if count1 > count0 {
            (sum1 - sum0) / (count1 - count0)
        } else {
            f64::NAN
        };
        println!(
            "| {} | {clients} | {} | {errors} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            args.label,
            samples.len(),
            ok.len() as f64 / elapsed,
            percentile(&ok, 50.0),
            percentile(&ok, 90.0),
            percentile(&ok, 99.0),
            mean_batch
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
