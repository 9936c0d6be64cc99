//! Fetch tensors by HF name with their expected shapes, and hand them to the backend.

use crate::config::{ConfigError, ExactActivations};
use crate::requantize::{Requantize, Requantized};
use suanli_backend::{ActPrecision, Backend, BackendError, HostTensor, Weight, WeightRole};
use suanli_core::DType;
use suanli_formats::{Bytes, ModelSource, TensorInfo};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: tensor {name} is missing")]
    Missing { path: String, name: String },
    #[error("{path}: tensor {name} has shape {found:?}, expected {expected:?} from the model's hyperparameters")]
    Shape {
        path: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: {source}")]
    Backend { path: String, source: BackendError },
    #[error("{path}: tensor {name} is not used by suanli's {arch} model; it may change the computation, so the file is refused rather than run without it")]
    Unused {
        path: String,
        name: String,
        arch: &'static str,
    },
}

pub(crate) struct Loader<'a, B: Backend> {
    pub src: &'a ModelSource,
    pub backend: &'a B,
    /// Which products ask the backend for exact activations.
    pub exact: ExactActivations,
    /// Matrices converted to a smaller format as they load (a draft model's copy): to what,
    /// and what was converted so far.
    requantized: std::cell::Cell<Requantized>,
    /// HF names of the tensors taken so far.
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(
        src: &'a ModelSource,
        backend: &'a B,
        exact: ExactActivations,
        requantize: Option<Requantize>,
    ) -> Self {
        Loader {
            src,
            backend,
            exact,
            requantized: std::cell::Cell::new(Requantized {
                to: requantize,
                ..Requantized::default()
            }),
            used: Default::default(),
        }
    }

    /// What re-quantizing did so far.
    pub fn requantized(&self) -> Requantized {
        self.requantized.get()
    }

    /// Count a tensor as used without loading it (read elsewhere, or derived and ignored as
    /// transformers ignores it).
    pub fn mark_used(&self, name: &str) {
        self.used.borrow_mut().insert(name.to_owned());
    }

    /// Tensor `name`, which must have exactly `shape`, counted as used.
    fn take(&self, name: &str, shape: &[usize]) -> Result<TensorInfo, LoadError> {
        let t = self.src.tensor(name).ok_or_else(|| LoadError::Missing {
            path: self.path(),
            name: name.into(),
        })?;
        self.mark_used(name);
        if t.shape != shape {
            return Err(LoadError::Shape {
                path: self.path(),
                name: name.into(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Every tensor of the file was taken: one that was not (an unknown name, a bias the
    /// architecture does not have, an expert table) would otherwise be silently dropped.
    pub fn check_all_used(&self, arch: &'static str) -> Result<(), LoadError> {
        let used = self.used.borrow();
        let unused = self
            .src
            .unknown_tensors()
            .into_iter()
            .chain(
                self.src
                    .tensor_names()
                    .into_iter()
                    .filter(|n| !used.contains(n) && !n.ends_with("rotary_emb.inv_freq")),
            )
            .next();
        match unused {
            Some(name) => Err(LoadError::Unused {
                path: self.path(),
                name,
                arch,
            }),
            None => Ok(()),
        }
    }

    fn path(&self) -> String {
        self.src.path().display().to_string()
    }

    pub fn has(&self, name: &str) -> bool {
        self.src.tensor(name).is_some()
    }

    /// A tensor whose shape must be exactly `shape` (1-D or 2-D), rows `row_range` of it.
    fn load(
        &self,
        name: &str,
        shape: &[usize],
        rows: Option<std::ops::Range<usize>>,
        role: WeightRole,
        precision: ActPrecision,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        let t = self.take(name, shape)?;
        let (all_rows, cols) = if shape.len() == 1 {
            (1, shape[0])
        } else {
            (shape[0], shape[1])
        };
        let r = rows.unwrap_or(0..all_rows);
        self.prepare(name, &t, r, cols, role, precision)
    }

    /// Rows `r` (each `cols` wide) of tensor `t`'s bytes, handed to the backend.
    fn prepare(
        &self,
        name: &str,
        t: &TensorInfo,
        r: std::ops::Range<usize>,
        cols: usize,
        role: WeightRole,
        precision: ActPrecision,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        let row_bytes = t
            .dtype
            .row_bytes(cols)
            .map_err(|e| self.tensor_error(name, e))?;
        let bytes = t
            .bytes
            .slice(r.start * row_bytes..r.end * row_bytes)
            .ok_or_else(|| self.tensor_error(name, format!("rows {r:?} out of range")))?;
        self.prepare_bytes(name, t.dtype, bytes, r.len(), cols, role, precision)
    }

    /// `rows` rows of `cols` values stored as `dtype` in `bytes`, handed to the backend
    /// (converted first where the load re-quantizes).
    #[allow(clippy::too_many_arguments)]
    fn prepare_bytes(
        &self,
        name: &str,
        dtype: DType,
        bytes: Bytes,
        rows: usize,
        cols: usize,
        role: WeightRole,
        precision: ActPrecision,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        let (dtype, bytes) = match role.multiplies() {
            true => self.requantize(name, dtype, bytes, rows, cols)?,
            false => (dtype, bytes),
        };
        self.backend
            .prepare_weight(HostTensor {
                name,
                dtype,
                rows,
                cols,
                bytes: &bytes,
                role,
                precision,
            })
            .map_err(|e| LoadError::Backend {
                path: self.path(),
                source: e,
            })
    }

    /// What went wrong loading tensor `name`, with the file's path.
    fn tensor_error(&self, name: &str, what: impl std::fmt::Display) -> LoadError {
        LoadError::Backend {
            path: self.path(),
            source: suanli_backend::shape_err("load", format!("{name}: {what}")),
        }
    }

    /// Rows `ids` of a `[rows, cols]` matrix, in that order, as one matrix (a draft model's
    /// short head); not counted as re-quantized (the model's own matrices are what that
    /// reports).
    pub fn matrix_gathered(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        ids: &[u32],
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        let t = self.take(name, &[rows, cols])?;
        let row_bytes = t
            .dtype
            .row_bytes(cols)
            .map_err(|e| self.tensor_error(name, e))?;
        let src = t.bytes.as_slice();
        let mut out = Vec::with_capacity(ids.len() * row_bytes);
        for &id in ids {
            let at = id as usize * row_bytes;
            let row = src
                .get(at..at + row_bytes)
                .filter(|_| (id as usize) < rows)
                .ok_or_else(|| self.tensor_error(name, format!("row {id} out of range")))?;
            out.extend_from_slice(row);
        }
        let counted = self.requantized.get();
        let w = self.prepare_bytes(
            name,
            t.dtype,
            Bytes::from_vec(out),
            ids.len(),
            cols,
            WeightRole::Matrix,
            ActPrecision::Fast,
        );
        self.requantized.set(counted);
        w
    }

    /// A matrix's bytes as they go to the backend: converted where the load re-quantizes and
    /// the format spends more bits, counted either way.
    fn requantize(
        &self,
        name: &str,
        dtype: DType,
        bytes: Bytes,
        rows: usize,
        cols: usize,
    ) -> Result<(DType, Bytes), LoadError> {
        let mut done = self.requantized.get();
        let Some(to) = done.to else {
            return Ok((dtype, bytes));
        };
        done.bytes_before += bytes.len();
        let out = match to.converts(dtype, cols) {
            true => {
                let q = to
                    .convert(dtype, bytes.as_slice(), rows, cols)
                    .map_err(|e| self.tensor_error(name, e))?;
                done.converted += 1;
                (to.dtype(), Bytes::from_vec(q))
            }
            false => (dtype, bytes),
        };
        done.bytes_after += out.1.len();
        self.requantized.set(done);
        Ok(out)
    }

    /// One `[rows, cols]` matrix per expert of projection `proj` under `prefix`
    /// (`model.layers.N.mlp`): from GGUF's stacked `{prefix}.experts.{proj}.weight`
    /// (`[n, rows, cols]`), or from Hugging Face's `{prefix}.experts.{e}.{proj}.weight`.
    pub fn experts(
        &self,
        prefix: &str,
        proj: &str,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<Weight<B::WeightStore>>, LoadError> {
        let stacked = format!("{prefix}.experts.{proj}.weight");
        if !self.has(&stacked) {
            return (0..n)
                .map(|e| self.matrix(&format!("{prefix}.experts.{e}.{proj}.weight"), rows, cols))
                .collect();
        }
        let t = self.take(&stacked, &[n, rows, cols])?;
        (0..n)
            .map(|e| {
                self.prepare(
                    &format!("{stacked}[{e}]"),
                    &t,
                    e * rows..(e + 1) * rows,
                    cols,
                    WeightRole::Matrix,
                    self.matrix_precision(),
                )
            })
            .collect()
    }

    /// A `[1, cols]` matrix that GGUF files store as a vector (the shared expert's gate).
    pub fn row_matrix(&self, name: &str, cols: usize) -> Result<Weight<B::WeightStore>, LoadError> {
        let vector = self.src.tensor(name).is_some_and(|t| t.shape.len() == 1);
        let shape: &[usize] = if vector { &[cols] } else { &[1, cols] };
        let t = self.take(name, shape)?;
        self.prepare(
            name,
            &t,
            0..1,
            cols,
            WeightRole::Matrix,
            self.matrix_precision(),
        )
    }

    pub fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        self.load(
            name,
            &[rows, cols],
            None,
            WeightRole::Matrix,
            self.matrix_precision(),
        )
    }

    fn matrix_precision(&self) -> ActPrecision {
        match self.exact {
            ExactActivations::All => ActPrecision::Exact,
            _ => ActPrecision::Fast,
        }
    }

    fn head_precision(&self) -> ActPrecision {
        match self.exact {
            ExactActivations::All => ActPrecision::Exact,
            ExactActivations::Head => ActPrecision::ExactTop,
            ExactActivations::Off => ActPrecision::Fast,
        }
    }

    /// The output projection (untied).
    pub fn head(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        self.load(
            name,
            &[rows, cols],
            None,
            WeightRole::Matrix,
            self.head_precision(),
        )
    }

    /// The token embedding table; `tied` when it is also the output projection.
    pub fn embedding(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        tied: bool,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        let role = if tied {
            WeightRole::TiedEmbedding
        } else {
            WeightRole::Embedding
        };
        let precision = if tied {
            self.head_precision()
        } else {
            ActPrecision::Fast
        };
        self.load(name, &[rows, cols], None, role, precision)
    }

    /// Rows `range` of a `[rows, cols]` matrix (halves of a fused projection).
    pub fn matrix_rows(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        range: std::ops::Range<usize>,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        self.load(
            name,
            &[rows, cols],
            Some(range),
            WeightRole::Matrix,
            self.matrix_precision(),
        )
    }

    /// A norm's weight plus `offset` (1 for Gemma's HF checkpoints, whose norms scale by 1 + w),
    /// as F32.
    pub fn norm(
        &self,
        name: &str,
        len: usize,
        offset: f32,
    ) -> Result<Weight<B::WeightStore>, LoadError> {
        if offset == 0.0 {
            return self.vector(name, len);
        }
        let t = self.take(name, &[len])?;
        let mut w = vec![0f32; len];
        suanli_core::quant::dequantize(t.dtype, t.bytes.as_slice(), &mut w)
            .map_err(|e| self.tensor_error(name, e))?;
        let bytes = suanli_formats::Bytes::from_vec(
            w.iter().flat_map(|x| (x + offset).to_le_bytes()).collect(),
        );
        self.backend
            .prepare_weight(HostTensor {
                name,
                dtype: suanli_core::DType::F32,
                rows: 1,
                cols: len,
                bytes: &bytes,
                role: WeightRole::Vector,
                precision: ActPrecision::Fast,
            })
            .map_err(|e| LoadError::Backend {
                path: self.path(),
                source: e,
            })
    }

    pub fn vector(&self, name: &str, len: usize) -> Result<Weight<B::WeightStore>, LoadError> {
        self.load(name, &[len], None, WeightRole::Vector, ActPrecision::Fast)
    }

    pub fn opt_vector(
        &self,
        name: &str,
        len: usize,
    ) -> Result<Option<Weight<B::WeightStore>>, LoadError> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}
