//! Look at a dataset: statistics, and samples with their boxes drawn, raw or as the
//! training pipeline augments them (Detectron2's tools/visualize_data.py).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};

use candletron::config::Config;
use candletron::data::catalog::get_datasets;
use candletron::data::datasets::widerface::{self, FaceFilter};
use candletron::data::mapper::DatasetMapper;
use candletron::data::rng::{mix_seed, SampleRng};
use candletron::data::statistics::DatasetStats;
use candletron::utils::visualizer::{draw_box, draw_label, BLACK, PALETTE, WHITE};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Split {
    Train,
    Test,
}

#[derive(Parser)]
#[command(
    about = "Print dataset statistics and draw samples with their boxes",
    long_about = "Print dataset statistics (images, boxes, ignored boxes, images without boxes, a box-size \
histogram) for DATASETS.TRAIN or DATASETS.TEST, and with --output draw the first --num samples with \
their boxes (trainable boxes in colour, ignored ones in grey). Training samples are shown as the \
augmentation pipeline produces them unless --raw. With --widerface-txt FILE only the statistics of \
that annotation file are printed; no images are needed."
)]
struct Args {
    /// Config file (defaults in code otherwise).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which of DATASETS.TRAIN / DATASETS.TEST to show.
    #[arg(long, value_enum, default_value_t = Split::Train)]
    split: Split,
    /// How many samples to draw.
    #[arg(long, default_value_t = 16)]
    num: usize,
    /// Folder for the drawn samples (PNG); without it only statistics are printed.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Draw training samples without augmentation.
    #[arg(long)]
    raw: bool,
    /// Statistics of a WIDER FACE `*_bbx_gt.txt` file (images need not exist).
    #[arg(long)]
    widerface_txt: Option<PathBuf>,
    /// Print statistics only (the default without --output).
    #[arg(long)]
    stats: bool,
    /// Print the statistics as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Config overrides `KEY VALUE ...`, after `--`.
    #[arg(last = true)]
    opts: Vec<String>,
}

fn print_stats(stats: &DatasetStats, json: bool) {
    print!("{stats}");
    if json {
        println!("{}", stats.to_json());
    }
}

fn main() -> Result<()> {
    candletron::utils::logging::init();
    let args = Args::parse();
    let cfg = Config::from_args(args.config.as_deref(), &args.opts)?;

    if let Some(txt) = &args.widerface_txt {
        let records = widerface::load_records(txt, Path::new(""), &FaceFilter::from_config(&cfg))?;
        print_stats(&DatasetStats::from_records(&records), args.json);
        return Ok(());
    }

    let names = match args.split {
        Split::Train => &cfg.datasets.train,
        Split::Test => &cfg.datasets.test,
    };
    if names.is_empty() {
        bail!(
            "DATASETS.{} is empty: set it in the config or pass `-- DATASETS.{} [name]`",
            if args.split == Split::Train {
                "TRAIN"
            } else {
                "TEST"
            },
            if args.split == Split::Train {
                "TRAIN"
            } else {
                "TEST"
            }
        );
    }
    let dataset = get_datasets(names, &cfg)?;
    println!(
        "dataset {} ({} classes)",
        dataset.name,
        dataset.metadata.thing_classes.len()
    );
    let stats = DatasetStats::from_records(&dataset.records);
    let Some(out) = args.output.as_ref().filter(|_| !args.stats) else {
        print_stats(&stats, args.json);
        return Ok(());
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let augment = args.split == Split::Train && !args.raw;
    let mapper = DatasetMapper::from_config(&cfg, augment)?;
    let seed = cfg.seed.max(0) as u64;
    let mut written = 0;
    for (i, rec) in dataset.records.iter().enumerate().take(args.num) {
        let img = match DatasetMapper::read_image(rec) {
            Ok(img) => img,
            Err(e) => {
                eprintln!("skipping: {e}");
                continue;
            }
        };
        let mut rng = SampleRng::new(mix_seed(seed, i as u64));
        let sample = if augment {
            mapper.apply(img, rec, &mut rng)
        } else {
            // Raw: the stored image and its annotation, unresized.
            DatasetMapper {
                pipeline: candletron::data::mapper::Pipeline::Test {
                    short: 0,
                    max_size: 0,
                },
                fill: mapper.fill,
                classify_test: None,
            }
            .apply(img, rec, &mut rng)
        };
        let mut canvas = sample.image.clone();
        let thickness = (canvas.width().min(canvas.height()) / 400).clamp(1, 3);
        let inst = &sample.instances;
        for k in 0..inst.len() {
            let [x1, y1, x2, y2] = inst.boxes[k];
            let color = if inst.ignore[k] {
                image::Rgb([150, 150, 150])
            } else {
                PALETTE[inst.classes[k] % PALETTE.len()]
            };
            draw_box(
                &mut canvas,
                [x1 as f64, y1 as f64, (x2 - x1) as f64, (y2 - y1) as f64],
                color,
                thickness,
            );
        }
        let label = format!(
            "{} - {} boxes ({} ignored)",
            sample.image_id,
            inst.len(),
            inst.len() - inst.num_trainable()
        );
        draw_label(&mut canvas, 2, 2, &label, 16.0, WHITE, BLACK);
        let name = format!("{i:04}_{}.png", sample.image_id.replace(['/', '\\'], "_"));
        let path = out.join(name);
        canvas
            .save(&path)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        written += 1;
    }
    print_stats(&stats, args.json);
    eprintln!("wrote {written} images to {}", out.display());
    Ok(())
}
