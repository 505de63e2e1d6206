//! `Predictor` (Detectron2's `DefaultPredictor`): a trained model from its config, and a
//! call from an image to detections in that image's pixels, or to class probabilities.

use candle_core::{Device, Tensor, D};
use image::DynamicImage;

use crate::checkpoint::read_trained_with;
use crate::config::{ClassifierLoss, Config};
use crate::data::catalog::DatasetRecord;
use crate::data::imagenet_classes;
use crate::data::mapper::DatasetMapper;
use crate::data::rng::SampleRng;
use crate::data::transforms::{image_to_tensor, resize_short_center_crop};
use crate::error::{Error, Result};
use crate::modeling::{build_model, Model, Prediction};
use crate::structures::ModelInput;
use crate::utils::visualizer::{LabeledBox, PALETTE};

/// One detected object, in the original image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub bbox: [f32; 4],
    pub score: f32,
    pub class_id: usize,
    pub class_name: String,
}

impl Detection {
    /// The box as `demo` and `serve` draw it: "NAME 0.93" in the class's colour.
    pub fn labeled_box(&self) -> LabeledBox {
        let [x1, y1, x2, y2] = self.bbox.map(|v| v as f64);
        LabeledBox {
            xywh: [x1, y1, x2 - x1, y2 - y1],
            score: self.score as f64,
            label: format!("{} {:.2}", self.class_name, self.score),
            color: PALETTE[self.class_id % PALETTE.len()],
        }
    }
}

/// What the model says about one image.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicted {
    /// A detector's objects, best first.
    Detections(Vec<Detection>),
    /// A classifier's probabilities by class id: softmax for a single-label model,
    /// each class's sigmoid for a multi-label one (`MODEL.CLASSIFIER.LOSS` bce or focal).
    Probabilities(Vec<f32>),
}

pub struct Predictor {
    cfg: Config,
    model: Model,
    mapper: Option<DatasetMapper>,
    class_names: Vec<String>,
}

impl Predictor {
    /// Builds `MODEL.META_ARCHITECTURE` with `MODEL.WEIGHTS` loaded (required, and it must
    /// fit the model: a checkpoint that leaves parameters missing or mismatched is an
    /// error here, since predictions of a half-loaded model mean nothing) and keeps its
    /// inference copy (norms folded, fused kernels).
    pub fn from_config(cfg: &Config) -> Result<Self> {
        Self::build(cfg, true)
    }

    /// As [`Self::from_config`], but weights that leave parameters missing or mismatched
    /// are only reported (a warning): for looking at a partly trained or foreign model.
    pub fn from_config_allowing_unmatched(cfg: &Config) -> Result<Self> {
        Self::build(cfg, false)
    }

    fn build(cfg: &Config, strict: bool) -> Result<Self> {
        if cfg.model.weights.is_empty() {
            return Err(Error::run("Predictor needs MODEL.WEIGHTS"));
        }
        let (model, report) = build_model(cfg, 0)?;
        if let Some(r) = &report {
            if !r.missing.is_empty() || !r.mismatched.is_empty() || r.loaded == 0 {
                let mut message = format!(
                    "MODEL.WEIGHTS {} does not fit {}: {r}",
                    cfg.model.weights, cfg.model.meta_architecture
                );
                if r.loaded == 0 {
                    message.push_str(
                        "\n  no name matches: the weights are another model's; give the \
                         config file they were trained with",
                    );
                }
                if strict || r.loaded == 0 {
                    return Err(Error::run(message));
                }
                tracing::warn!("{message}");
            }
        }
        let classifier = cfg.model.meta_architecture == "Classifier";
        let mapper = if classifier {
            None
        } else {
            Some(DatasetMapper::from_config(cfg, false)?)
        };
        let count = if classifier {
            cfg.model.classifier.num_classes
        } else if cfg.model.meta_architecture == "GeneralizedRCNN" {
            cfg.model.roi_heads.num_classes
        } else {
            cfg.model.ssdlite.num_classes
        };
        let imagenet = imagenet_classes();
        let stored = crate::checkpoint::resolve(&cfg.model.weights)
            .and_then(|p| read_trained_with(&p))?
            .map(|t| t.class_names)
            .filter(|names| !names.is_empty());
        let class_names = if let Some(names) = stored {
            if names.len() != count {
                return Err(Error::run(format!(
                    "MODEL.WEIGHTS {} was trained on {} classes ({}) but the model has {count}",
                    cfg.model.weights,
                    names.len(),
                    names.join(", ")
                )));
            }
            names
        } else if classifier && count == imagenet.len() {
            imagenet.iter().map(|s| s.to_string()).collect()
        } else {
            (0..count).map(|i| format!("class {i}")).collect()
        };
        Ok(Self {
            cfg: cfg.clone(),
            model: model.fused()?,
            mapper,
            class_names,
        })
    }

    /// Names the classes. The default: the training data's names stored in a checkpoint
    /// written by training, else ImageNet's for a 1000-class classifier, else `class {id}`.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.class_names.len() {
            return Err(Error::run(format!(
                "{} class names for a model of {} classes",
                names.len(),
                self.class_names.len()
            )));
        }
        self.class_names = names;
        Ok(self)
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// One image, converted to 8-bit RGB as the data loader does (RGBA, grey and 16-bit
    /// images included).
    pub fn predict(&self, image: &DynamicImage) -> Result<Predicted> {
        let mut out = self.predict_batch(std::slice::from_ref(image))?;
        Ok(out.pop().expect("one prediction per image"))
    }

    /// Several images of any sizes as one batch, padded to the largest (as evaluation
    /// batches them); images of one size give exactly the results of one call each.
    pub fn predict_batch(&self, images: &[DynamicImage]) -> Result<Vec<Predicted>> {
        let inputs = images
            .iter()
            .map(|img| self.prepare(img))
            .collect::<Result<Vec<_>>>()?;
        self.predict_prepared(&inputs)
    }

    /// The model's input for `img`: evaluation's test-time resize for a detector
    /// (`INPUT.MIN_SIZE_TEST` / `MAX_SIZE_TEST`, the same code path), torchvision's
    /// resize and center crop for a classifier. Split from [`Self::predict_prepared`] so a
    /// server can prepare images on many threads and batch those of one input size.
    pub fn prepare(&self, img: &DynamicImage) -> Result<ModelInput> {
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::run(format!("empty image ({w}x{h})")));
        }
        match &self.mapper {
            Some(mapper) => {
                let rec = DatasetRecord {
                    file_name: Default::default(),
                    image_id: String::new(),
                    width: w,
                    height: h,
                    annotations: Vec::new(),
                    label: None,
                    embedded: None,
                };
                let sample = mapper.apply(rgb, &rec, &mut SampleRng::new(0));
                let x = image_to_tensor(&sample.image, &Device::Cpu)?;
                Ok(ModelInput::new(x).with_output_size(h as usize, w as usize))
            }
            None => {
                let i = &self.cfg.input;
                let crop = resize_short_center_crop(&rgb, i.resize_short, i.crop_size)
                    .map_err(Error::run)?;
                Ok(ModelInput::new(image_to_tensor(&crop, &Device::Cpu)?))
            }
        }
    }

    /// Runs inputs from [`Self::prepare`] as one batch.
    pub fn predict_prepared(&self, inputs: &[ModelInput]) -> Result<Vec<Predicted>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        self.model
            .inference(inputs)?
            .into_iter()
            .map(|p| self.named(p))
            .collect()
    }

    /// Whether the model is a classifier (answers probabilities) rather than a detector.
    pub fn is_classifier(&self) -> bool {
        self.mapper.is_none()
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn named(&self, p: Prediction) -> Result<Predicted> {
        Ok(match p {
            Prediction::Detections(d) => Predicted::Detections(
                d.boxes
                    .iter()
                    .zip(&d.scores)
                    .zip(&d.classes)
                    .map(|((b, &score), &class_id)| Detection {
                        bbox: *b,
                        score,
                        class_id,
                        class_name: self
                            .class_names
                            .get(class_id)
                            .cloned()
                            .unwrap_or_else(|| format!("class {class_id}")),
                    })
                    .collect(),
            ),
            Prediction::Logits(l) => {
                let t = Tensor::new(l.as_slice(), &Device::Cpu)?;
                let p = if self.cfg.model.classifier.loss == ClassifierLoss::CrossEntropy {
                    candle_nn::ops::softmax(&t, D::Minus1)?
                } else {
                    candle_nn::ops::sigmoid(&t)?
                };
                Predicted::Probabilities(crate::ops::host::to_vec1(&p)?)
            }
        })
    }
}
