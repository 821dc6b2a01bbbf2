//! ONNX export of the decoder and the denoiser (docs/bundle-format.md, "The graphs"), written from Rust with the prost
//! types of the vendored onnx.proto.
//!
//! - `decoder.onnx`: z f32[B, d] (standardized latent) -> params f32[B, D] in host units.
//!   Latent de-standardization, the decoder, unpadding and per-tensor de-normalization are
//!   all inside the graph, so a host needs nothing of this library.
//! - `denoiser.onnx`: x f32[B, d], t i64[B] -> eps f32[B, d], time embedding inside.
pub mod expose;
pub mod external;
pub mod graph;

/// prost types generated from proto/onnx.proto.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use crate::generator::Generator;
use crate::torch::tensor_to_vec;
use graph::{attr, Attr, Dim, GraphBuilder};
use pdiff_core::error::{Error, Result};
use pdiff_core::model::{norm_groups, timestep_frequencies, DenoiserConfig, TokenMap, NORM_EPS};
use pdiff_core::training::DiffusionTarget;
use proto::tensor_proto::DataType;
use std::collections::HashMap;
use tch::Tensor;

/// Weights of one network by VarStore name, as (shape, flat f32 values).
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn get(&self, name: &str) -> Result<(Vec<i64>, Vec<f32>)> {
        let t = self.0.get(name).ok_or_else(|| Error::Torch(format!("export: variable '{name}' not found")))?;
        let v = tensor_to_vec(t)?;
        Ok((t.size(), v))
    }
    fn init(&self, b: &mut GraphBuilder, name: &str) -> Result<String> {
        let (shape, v) = self.get(name)?;
        Ok(b.f32(name, &shape, &v))
    }
}

fn linear(b: &mut GraphBuilder, w: &Weights, prefix: &str, x: &str) -> Result<String> {
    let wt = w.init(b, &format!("{prefix}.weight"))?;
    let bias = w.init(b, &format!("{prefix}.bias"))?;
    Ok(b.node("Gemm", &[x, &wt, &bias], vec![attr("transB", Attr::Int(1))], None))
}

fn conv(b: &mut GraphBuilder, w: &Weights, prefix: &str, x: &str, stride: i64, pad: i64) -> Result<String> {
    let wt = w.init(b, &format!("{prefix}.weight"))?;
    let bias = w.init(b, &format!("{prefix}.bias"))?;
    Ok(b.node("Conv", &[x, &wt, &bias], vec![attr("strides", Attr::Ints(vec![stride])), attr("pads", Attr::Ints(vec![pad, pad]))], None))
}

fn conv_transpose(b: &mut GraphBuilder, w: &Weights, prefix: &str, x: &str, stride: i64, pad: i64, out_pad: i64) -> Result<String> {
    let wt = w.init(b, &format!("{prefix}.weight"))?;
    let bias = w.init(b, &format!("{prefix}.bias"))?;
    Ok(b.node(
        "ConvTranspose",
        &[x, &wt, &bias],
        vec![attr("strides", Attr::Ints(vec![stride])), attr("pads", Attr::Ints(vec![pad, pad])), attr("output_padding", Attr::Ints(vec![out_pad]))],
        None,
    ))
}

/// GroupNorm on [B, C, L]: reshape to [B, G, -1], InstanceNormalization (no affine), reshape
/// back, per-channel affine. Same arithmetic as torch's group_norm.
fn group_norm(b: &mut GraphBuilder, w: &Weights, prefix: &str, x: &str, channels: i64) -> Result<String> {
    let g = norm_groups(channels);
    let to_groups = b.i64("gn_shape", &[0, g, -1]);
    let back = b.i64("gn_back", &[0, channels, -1]);
    let ones = b.f32("gn_one", &[g], &vec![1.0; g as usize]);
    let zeros = b.f32("gn_zero", &[g], &vec![0.0; g as usize]);
    let h = b.op("Reshape", &[x, &to_groups]);
    let h = b.node("InstanceNormalization", &[&h, &ones, &zeros], vec![attr("epsilon", Attr::Float(NORM_EPS as f32))], None);
    let h = b.op("Reshape", &[&h, &back]);
    let (_, gamma) = w.get(&format!("{prefix}.weight"))?;
    let (_, beta) = w.get(&format!("{prefix}.bias"))?;
    let gamma = b.f32(&format!("{prefix}.weight"), &[channels, 1], &gamma);
    let beta = b.f32(&format!("{prefix}.bias"), &[channels, 1], &beta);
    let h = b.op("Mul", &[&h, &gamma]);
    Ok(b.op("Add", &[&h, &beta]))
}

/// A Linear layer on [..., in] (any rank): MatMul by the transposed weight, then the bias.
fn linear_nd(b: &mut GraphBuilder, w: &Weights, prefix: &str, x: &str) -> Result<String> {
    let (shape, v) = w.get(&format!("{prefix}.weight"))?;
    let (out_f, in_f) = (shape[0] as usize, shape[1] as usize);
    let mut t = vec![0f32; v.len()];
    for o in 0..out_f {
        for i in 0..in_f {
            t[i * out_f + o] = v[o * in_f + i];
        }
    }
    let wt = b.f32(&format!("{prefix}.weight_t"), &[in_f as i64, out_f as i64], &t);
    let bias = w.init(b, &format!("{prefix}.bias"))?;
    let h = b.op("MatMul", &[x, &wt]);
    Ok(b.op("Add", &[&h, &bias]))
}

/// One residual block of the `mlp` denoiser (as nets::MlpDenoiser::forward):
/// h + fc2(SiLU(fc1(SiLU(h + temb)))).
fn residual_block(b: &mut GraphBuilder, w: &Weights, i: i64, h: &str, temb: &str) -> Result<String> {
    let u = b.op("Add", &[h, temb]);
    let u = silu(b, &u);
    let u = linear(b, w, &format!("block.{i}.fc1"), &u)?;
    let u = silu(b, &u);
    let u = linear(b, w, &format!("block.{i}.fc2"), &u)?;
    Ok(b.op("Add", &[h, &u]))
}

fn elu(b: &mut GraphBuilder, x: &str) -> String {
    b.node("Elu", &[x], vec![attr("alpha", Attr::Float(1.0))], None)
}

/// The chunked autoencoder's decoder (nets::ChunkedAutoencoder): latent [B, components]
/// principal coefficients, mapped back to the token latents [B, tokens x e] by the basis ->
/// normalized parameters [B, D] (anchor added; the token grid gathered back to the flat order).
fn chunked_decoder_nodes(b: &mut GraphBuilder, g: &Generator, w: &Weights, z: &str) -> Result<String> {
    let spec = g.ae_config.chunked.as_ref().ok_or_else(|| Error::invalid("autoencoder", "not chunked"))?;
    let tokens = TokenMap::new(&g.layout, spec.chunk as usize);
    let (n, c) = (tokens.tokens() as i64, tokens.chunk as i64);
    let basis = w.init(b, "enc.basis")?;
    let mean = w.init(b, "enc.basis_mean")?;
    let h = b.op("MatMul", &[z, &basis]);
    let z = b.op("Add", &[&h, &mean]);
    let seq = b.i64("token_shape", &[-1, n, spec.token_dim]);
    let h = b.op("Reshape", &[&z, &seq]);
    let h = linear_nd(b, w, "dec.in", &h)?;
    let pos = w.init(b, "dec.position")?;
    let h = b.op("Add", &[&h, &pos]);
    let h = elu(b, &h);
    let h = linear_nd(b, w, "dec.mid", &h)?;
    let h = elu(b, &h);
    let h = linear_nd(b, w, "dec.out", &h)?;
    let (_, scale) = w.get("enc.scale")?;
    let scale = b.f32("token_scale", &[n, 1], &scale);
    let h = b.op("Mul", &[&h, &scale]);
    let grid = b.i64("grid_shape", &[-1, n * c]);
    let h = b.op("Reshape", &[&h, &grid]);
    let flat = b.i64("flat_index", &tokens.flat_index());
    let h = b.node("Gather", &[&h, &flat], vec![attr("axis", Attr::Int(1))], None);
    let anchor = w.init(b, "enc.anchor")?;
    Ok(b.op("Add", &[&h, &anchor]))
}

fn silu(b: &mut GraphBuilder, x: &str) -> String {
    let s = b.op("Sigmoid", &[x]);
    b.op("Mul", &[x, &s])
}

/// The conv presets' decoder network: latent [B, d] (de-standardized) -> [B, Dpad] normalized
/// parameters (position bias added).
fn conv_decoder_nodes(b: &mut GraphBuilder, g: &Generator, w: &Weights, h: &str) -> Result<String> {
    let cfg = &g.ae_config;
    let h = linear(b, w, "dec.fc", h)?;
    let c = cfg.encoder.last().unwrap().channels;
    let shape = b.i64("bottleneck_shape", &[-1, c, cfg.bottleneck_len(g.padded_len)]);
    let mut h = b.op("Reshape", &[&h, &shape]);
    let n_dec = cfg.decoder_channels.len();
    for (i, (spec, &out_ch)) in cfg.encoder.iter().rev().zip(&cfg.decoder_channels).enumerate() {
        h = conv_transpose(b, w, &format!("dec.{i}.conv"), &h, spec.stride, spec.padding, spec.output_padding())?;
        // Same rule as model::Autoencoder: without a final conv, the last transposed conv is
        // the output layer.
        if cfg.final_kernel.is_some() || i + 1 < n_dec {
            h = group_norm(b, w, &format!("dec.{i}.norm"), &h, out_ch)?;
            h = b.node("Elu", &[&h], vec![attr("alpha", Attr::Float(1.0))], None);
        }
    }
    if let Some(k) = cfg.final_kernel {
        h = conv(b, w, "dec.out", &h, 1, k / 2)?;
    }
    let flat = b.i64("flat_shape", &[-1, g.padded_len as i64]);
    let h = b.op("Reshape", &[&h, &flat]);
    let pos_bias = w.init(b, "dec.out.position_bias")?;
    let h = b.op("Add", &[&h, &pos_bias]);
    Ok(h)
}

/// The decoder's nodes: standardized latent `z` [B, d] -> parameters [B, D] in host units
/// (latent clipping and de-standardization, the decoder network, unpadding, per-tensor
/// de-normalization). Returns the output's name (`out` when given).
fn decoder_nodes(b: &mut GraphBuilder, g: &Generator, z: &str, out: Option<&str>) -> Result<String> {
    let w = Weights(g.autoencoder_variables());
    let cfg = &g.ae_config;
    let d_lat = g.latent_dim() as i64;
    let d = g.layout.param_count();
    let std = b.f32("latent_std", &[d_lat], &g.latent_std);
    let mean = b.f32("latent_mean", &[d_lat], &g.latent_mean);
    // Clip to the training latents' range (per dimension), then de-standardize.
    let hi = b.f32("latent_clip_hi", &[d_lat], &g.latent_clip);
    let lo: Vec<f32> = g.latent_clip.iter().map(|c| -c).collect();
    let lo = b.f32("latent_clip_lo", &[d_lat], &lo);
    let h = b.op("Min", &[z, &hi]);
    let h = b.op("Max", &[&h, &lo]);
    let h = b.op("Mul", &[&h, &std]);
    let h = b.op("Add", &[&h, &mean]);
    let h = if cfg.chunked.is_some() { chunked_decoder_nodes(b, g, &w, &h)? } else { conv_decoder_nodes(b, g, &w, &h)? };
    let (starts, ends, axes) = (b.i64("starts", &[0]), b.i64("ends", &[d as i64]), b.i64("axes", &[1]));
    let h = b.op("Slice", &[&h, &starts, &ends, &axes]);
    // Per-tensor de-normalization, expanded to one scale and one shift per parameter.
    let mut scale = vec![0f32; d];
    let mut shift = vec![0f32; d];
    for t in &g.layout.tensors {
        scale[t.offset..t.offset + t.numel()].fill(t.std);
        shift[t.offset..t.offset + t.numel()].fill(t.mean);
    }
    let scale = b.f32("param_std", &[d as i64], &scale);
    let shift = b.f32("param_mean", &[d as i64], &shift);
    let h = b.op("Mul", &[&h, &scale]);
    Ok(b.node("Add", &[&h, &shift], vec![], out))
}

/// decoder.onnx for a trained generator.
pub fn export_decoder(g: &Generator) -> Result<proto::ModelProto> {
    let mut b = GraphBuilder::default();
    let z = b.input("z", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(g.latent_dim() as i64)]);
    decoder_nodes(&mut b, g, &z, Some("params"))?;
    b.output("params", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(g.layout.param_count() as i64)]);
    Ok(b.finish("pdiff_decoder", "p-diff decoder: standardized latent z [B, d] -> parameters [B, D] in host units"))
}

/// The denoiser's nodes: noisy latent `x` [B, d] and timesteps `t` i64 [B] (and, for a
/// conditional generator, `cond` = (condition [B, C], condition_mask [B])) -> predicted noise
/// [B, d]; the sinusoidal time embedding and the condition embedding are inside. Returns the
/// output's name.
fn denoiser_nodes(b: &mut GraphBuilder, g: &Generator, x: &str, t: &str, cond: Option<(&str, &str)>) -> Result<String> {
    let w = Weights(g.denoiser_variables());
    // Sinusoidal time embedding -> Linear -> SiLU -> Linear.
    let tdim = g.denoiser_config.time_dim();
    let freqs = timestep_frequencies(tdim);
    let freqs = b.f32("time_freqs", &[1, freqs.len() as i64], &freqs);
    let tf = b.node("Cast", &[t], vec![attr("to", Attr::Int(DataType::Float as i64))], None);
    let ax1 = b.i64("axis1", &[1]);
    let tf = b.op("Unsqueeze", &[&tf, &ax1]);
    let args = b.op("Mul", &[&tf, &freqs]);
    let (s, c) = (b.op("Sin", &[&args]), b.op("Cos", &[&args]));
    let emb = b.node("Concat", &[&s, &c], vec![attr("axis", Attr::Int(1))], None);
    let emb = linear(b, &w, "time.fc1", &emb)?;
    let emb = silu(b, &emb);
    let temb = linear(b, &w, "time.fc2", &emb)?;
    // Conditional: temb + mask * embed(condition) + (1 - mask) * null, as model::Denoiser.
    let temb = match cond {
        None => temb,
        Some((values, mask)) => {
            let c = linear(b, &w, "cond.fc", values)?;
            let m = b.op("Unsqueeze", &[mask, &ax1]);
            let one = b.f32_scalar("one", 1.0);
            let not_m = b.op("Sub", &[&one, &m]);
            let (_, null) = w.get("cond.null")?;
            let null = b.f32("cond.null", &[1, null.len() as i64], &null);
            let kept = b.op("Mul", &[&c, &m]);
            let dropped = b.op("Mul", &[&null, &not_m]);
            let with_c = b.op("Add", &[&temb, &kept]);
            b.op("Add", &[&with_c, &dropped])
        }
    };
    let out = match &g.denoiser_config {
        DenoiserConfig::Mlp { blocks, .. } => {
            let mut h = linear(b, &w, "in", x)?;
            for i in 0..*blocks {
                h = residual_block(b, &w, i, &h, &temb)?;
            }
            let h = silu(b, &h);
            linear(b, &w, "out", &h)?
        }
        DenoiserConfig::Cnn { channels, kernel, .. } => {
            let temb = b.op("Unsqueeze", &[&temb, &ax1]);
            let mut h = b.op("Unsqueeze", &[x, &ax1]);
            let n = channels.len() - 1;
            let mut skips: Vec<String> = Vec::new();
            for i in 0..n {
                let u = b.op("Add", &[&h, &temb]);
                h = conv(b, &w, &format!("conv.{i}"), &u, 1, kernel / 2)?;
                if i + 1 == n {
                    break;
                }
                h = group_norm(b, &w, &format!("norm.{i}"), &h, channels[i + 1])?;
                h = b.node("Elu", &[&h], vec![attr("alpha", Attr::Float(1.0))], None);
                // Same skip rule as model::Denoiser::forward.
                let mirror = n - 2 - i;
                if i < mirror && i < n / 2 - 1 {
                    skips.push(h.clone());
                } else if mirror < i && mirror < skips.len() {
                    h = b.op("Add", &[&h, &skips[mirror]]);
                }
            }
            b.op("Squeeze", &[&h, &ax1])
        }
    };
    // A v-predicting network's output becomes the noise: eps = sqrt(abar_t) v + sqrt(1 - abar_t)
    // x_t (as the tch backend does), so the graph's output is the noise for every generator.
    match g.target() {
        DiffusionTarget::Epsilon => Ok(out),
        DiffusionTarget::V => {
            let tab = g.config.schedule.tables();
            let len = tab.alpha_bars.len() as i64;
            let sqrt_ab: Vec<f32> = tab.alpha_bars.iter().map(|a| a.sqrt() as f32).collect();
            let sqrt_1mab: Vec<f32> = tab.alpha_bars.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
            let sa = b.f32("v_sqrt_alpha_bar", &[len], &sqrt_ab);
            let s1a = b.f32("v_sqrt_one_minus_alpha_bar", &[len], &sqrt_1mab);
            let sa = b.op("Gather", &[&sa, t]);
            let s1a = b.op("Gather", &[&s1a, t]);
            let sa = b.op("Unsqueeze", &[&sa, &ax1]);
            let s1a = b.op("Unsqueeze", &[&s1a, &ax1]);
            let from_v = b.op("Mul", &[&out, &sa]);
            let from_x = b.op("Mul", &[x, &s1a]);
            Ok(b.op("Add", &[&from_v, &from_x]))
        }
    }
}

/// denoiser.onnx for a trained generator.
pub fn export_denoiser(g: &Generator) -> Result<proto::ModelProto> {
    let d_lat = g.latent_dim() as i64;
    let mut b = GraphBuilder::default();
    let x = b.input("x", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let t = b.input("t", DataType::Int64, &[Dim::Named("batch")]);
    let cond = g.condition.as_ref().map(|c| {
        let values = b.input("condition", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(c.dim as i64)]);
        let mask = b.input("condition_mask", DataType::Float, &[Dim::Named("batch")]);
        (values, mask)
    });
    let out = denoiser_nodes(&mut b, g, &x, &t, cond.as_ref().map(|(v, m)| (v.as_str(), m.as_str())))?;
    b.node("Identity", &[&out], vec![], Some("eps"));
    b.output("eps", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let doc = match &g.condition {
        None => "p-diff denoiser: x_t [B, d], t [B] -> predicted noise [B, d]".to_string(),
        Some(c) => format!(
            "p-diff conditional denoiser: x_t [B, d], t [B], condition [B, {}], condition_mask [B] (1: conditioned, 0: no condition) -> predicted noise [B, d]",
            c.dim
        ),
    };
    Ok(b.finish("pdiff_denoiser", &doc))
}

/// sampler.onnx: the whole DDIM loop (eta = 0) and the decoder in one graph, so that a host —
/// or an execution provider such as CUDA — makes one run per batch instead of a host round trip
/// of the latent at every step. Inputs: `noise` f32 [B, d] (x_T, standard normal) and
/// `timesteps` i64 [S] (the DDIM sequence, ascending: `i * T / S` for i in 0..S); output
/// `params` f32 [B, D] in host units. The step is the same arithmetic, in the same order and
/// with the same f32 coefficients (computed in f64, then rounded), as
/// [`pdiff_core::diffusion::sample_latents`].
pub fn export_sampler(g: &Generator) -> Result<proto::ModelProto> {
    let d_lat = g.latent_dim() as i64;
    let tab = g.config.schedule.tables();
    let t_len = tab.alpha_bars.len() as i64;
    let sqrt_ab: Vec<f32> = tab.alpha_bars.iter().map(|a| a.sqrt() as f32).collect();
    let sqrt_1mab: Vec<f32> = tab.alpha_bars.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
    let mut b = GraphBuilder::default();
    let noise = b.input("noise", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let seq = b.input("timesteps", DataType::Int64, &[Dim::Named("steps")]);
    // Conditional: the condition [B, C] and the guidance scale (0: no condition).
    let cond = g.condition.as_ref().map(|c| {
        let values = b.input("condition", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(c.dim as i64)]);
        let guidance = b.input("guidance", DataType::Float, &[]);
        (values, guidance)
    });

    // The coefficients of every step, gathered once: sqrt(abar) and sqrt(1 - abar) at the
    // step's timestep and at the previous (smaller) one; before the first step they are 1 and 0.
    let sa_tab = b.f32("sqrt_alpha_bar", &[t_len], &sqrt_ab);
    let s1a_tab = b.f32("sqrt_one_minus_alpha_bar", &[t_len], &sqrt_1mab);
    let sa = b.op("Gather", &[&sa_tab, &seq]);
    let s1a = b.op("Gather", &[&s1a_tab, &seq]);
    let (start, all_but_last, axis0) = (b.i64("start", &[0]), b.i64("all_but_last", &[-1]), b.i64("axis0", &[0]));
    let (one, zero) = (b.f32("one", &[1], &[1.0]), b.f32("zero", &[1], &[0.0]));
    let sa_head = b.op("Slice", &[&sa, &start, &all_but_last, &axis0]);
    let s1a_head = b.op("Slice", &[&s1a, &start, &all_but_last, &axis0]);
    let sa_prev = b.node("Concat", &[&one, &sa_head], vec![attr("axis", Attr::Int(0))], None);
    let s1a_prev = b.node("Concat", &[&zero, &s1a_head], vec![attr("axis", Attr::Int(0))], None);
    let steps = b.op("Shape", &[&seq]);
    let steps = b.op("Squeeze", &[&steps, &axis0]);
    let one_i64 = b.i64_scalar("one_i64", 1);
    let last = b.op("Sub", &[&steps, &one_i64]);
    let keep_going = b.bool_scalar("true", true);

    // Loop body: iteration i runs the step at index k = S - 1 - i (from the largest t down).
    b.begin_subgraph();
    let iter = b.name("iteration");
    let cond_in = b.name("condition");
    let x = b.name("x");
    b.input(&iter, DataType::Int64, &[]);
    b.input(&cond_in, DataType::Bool, &[]);
    b.input(&x, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let k = b.op("Sub", &[&last, &iter]);
    let t_k = b.op("Gather", &[&seq, &k]);
    let (sa_k, s1a_k) = (b.op("Gather", &[&sa, &k]), b.op("Gather", &[&s1a, &k]));
    let (sp_k, s1p_k) = (b.op("Gather", &[&sa_prev, &k]), b.op("Gather", &[&s1a_prev, &k]));
    let x_shape = b.op("Shape", &[&x]);
    let one_1d = b.i64("one_1d", &[1]);
    let batch = b.op("Slice", &[&x_shape, &start, &one_1d, &axis0]);
    let eps = match &cond {
        None => {
            let t_batch = b.op("Expand", &[&t_k, &batch]);
            denoiser_nodes(&mut b, g, &x, &t_batch, None)?
        }
        Some((values, guidance)) => {
            // Classifier-free guidance in one batch: the rows conditioned, then the same rows
            // with no condition; eps = eps_none + g (eps_cond - eps_none).
            let x2 = b.node("Concat", &[&x, &x], vec![attr("axis", Attr::Int(0))], None);
            let v2 = b.node("Concat", &[values, values], vec![attr("axis", Attr::Int(0))], None);
            let ones = b.node("ConstantOfShape", &[&batch], vec![attr("value", Attr::Tensor1F32(1.0))], None);
            let zeros = b.node("ConstantOfShape", &[&batch], vec![attr("value", Attr::Tensor1F32(0.0))], None);
            let mask = b.node("Concat", &[&ones, &zeros], vec![attr("axis", Attr::Int(0))], None);
            let batch2 = b.op("Shape", &[&mask]);
            let t2 = b.op("Expand", &[&t_k, &batch2]);
            let eps2 = denoiser_nodes(&mut b, g, &x2, &t2, Some((&v2, &mask)))?;
            let (e_cond, e_none) = (b.name("eps_cond"), b.name("eps_none"));
            // Opset 17's Split without a `split` input cuts into equal parts, one per output.
            b.node_multi("Split", &[&eps2], vec![attr("axis", Attr::Int(0))], &[e_cond.clone(), e_none.clone()]);
            let diff = b.op("Sub", &[&e_cond, &e_none]);
            let pushed = b.op("Mul", &[guidance, &diff]);
            b.op("Add", &[&e_none, &pushed])
        }
    };
    // x0 = (x - sqrt(1 - abar) eps) / sqrt(abar); x = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
    let scaled = b.op("Mul", &[&s1a_k, &eps]);
    let x0 = b.op("Sub", &[&x, &scaled]);
    let x0 = b.op("Div", &[&x0, &sa_k]);
    let kept = b.op("Mul", &[&sp_k, &x0]);
    let added = b.op("Mul", &[&s1p_k, &eps]);
    let cond_out = b.name("condition_out");
    let x_out = b.name("x_out");
    b.node("Identity", &[&cond_in], vec![], Some(&cond_out));
    b.node("Add", &[&kept, &added], vec![], Some(&x_out));
    b.output(&cond_out, DataType::Bool, &[]);
    b.output(&x_out, DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let body = b.end_subgraph("ddim_step");

    let z = b.name("z");
    b.node_multi("Loop", &[&steps, &keep_going, &noise], vec![attr("body", Attr::Graph(Box::new(body)))], std::slice::from_ref(&z));
    decoder_nodes(&mut b, g, &z, Some("params"))?;
    b.output("params", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(g.layout.param_count() as i64)]);
    // The standardized latents before the decoder clips them: the host counts the clipped ones.
    b.node("Identity", &[&z], vec![], Some("latent"));
    b.output("latent", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let doc = match &g.condition {
        None => "p-diff DDIM sampler: noise x_T [B, d], timesteps [S] (ascending DDIM sequence) -> parameters [B, D] in host units, latent [B, d] (standardized, before clipping)".to_string(),
        Some(c) => format!(
            "p-diff conditional DDIM sampler: noise x_T [B, d], timesteps [S] (ascending DDIM sequence), condition [B, {}], guidance [] (classifier-free guidance scale; 0: no condition) -> parameters [B, D] in host units, latent [B, d] (standardized, before clipping)",
            c.dim
        ),
    };
    Ok(b.finish("pdiff_sampler", &doc))
}
