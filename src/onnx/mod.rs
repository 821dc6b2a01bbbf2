//! ONNX export of the decoder and the denoiser (docs/bundle-format.md, "The graphs"), written from Rust with the prost
//! types of the vendored onnx.proto.
//!
//! - `decoder.onnx`: z f32[B, d] (standardized latent) -> params f32[B, D] in host units.
//!   Latent de-standardization, the decoder, unpadding and per-tensor de-normalization are
//!   all inside the graph, so a host needs nothing of this library.
//! - `denoiser.onnx`: x f32[B, d], t i64[B] -> eps f32[B, d], time embedding inside.
pub mod graph;

/// prost types generated from proto/onnx.proto.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use crate::error::{Error, Result};
use crate::model::{norm_groups, timestep_frequencies, DenoiserConfig, NORM_EPS};
use crate::train::Generator;
use graph::{attr, Attr, Dim, GraphBuilder};
use proto::tensor_proto::DataType;
use std::collections::HashMap;
use tch::{Device, Tensor};

/// Weights of one network by VarStore name, as (shape, flat f32 values).
struct Weights(HashMap<String, Tensor>);

impl Weights {
    fn get(&self, name: &str) -> Result<(Vec<i64>, Vec<f32>)> {
        let t = self.0.get(name).ok_or_else(|| Error::Torch(format!("export: variable '{name}' not found")))?;
        let v = Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(tch::Kind::Float).contiguous().view([-1]))?;
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
        vec![
            attr("strides", Attr::Ints(vec![stride])),
            attr("pads", Attr::Ints(vec![pad, pad])),
            attr("output_padding", Attr::Ints(vec![out_pad])),
        ],
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

fn silu(b: &mut GraphBuilder, x: &str) -> String {
    let s = b.op("Sigmoid", &[x]);
    b.op("Mul", &[x, &s])
}

/// decoder.onnx for a trained generator.
pub fn export_decoder(g: &Generator) -> Result<Vec<u8>> {
    let w = Weights(g.autoencoder_variables());
    let cfg = &g.ae_config;
    let d_lat = g.latent_dim() as i64;
    let d = g.layout.param_count();
    let mut b = GraphBuilder::default();
    let z = b.input("z", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let std = b.f32("latent_std", &[d_lat], &g.latent_std);
    let mean = b.f32("latent_mean", &[d_lat], &g.latent_mean);
    // Clip to the training latents' range (per dimension), then de-standardize.
    let hi = b.f32("latent_clip_hi", &[d_lat], &g.latent_clip);
    let lo: Vec<f32> = g.latent_clip.iter().map(|c| -c).collect();
    let lo = b.f32("latent_clip_lo", &[d_lat], &lo);
    let h = b.op("Min", &[&z, &hi]);
    let h = b.op("Max", &[&h, &lo]);
    let h = b.op("Mul", &[&h, &std]);
    let h = b.op("Add", &[&h, &mean]);
    let h = linear(&mut b, &w, "dec.fc", &h)?;
    let c = cfg.encoder.last().unwrap().channels;
    let shape = b.i64("bottleneck_shape", &[-1, c, cfg.bottleneck_len(g.padded_len)]);
    let mut h = b.op("Reshape", &[&h, &shape]);
    let n_dec = cfg.decoder_channels.len();
    for (i, (spec, &out_ch)) in cfg.encoder.iter().rev().zip(&cfg.decoder_channels).enumerate() {
        h = conv_transpose(&mut b, &w, &format!("dec.{i}.conv"), &h, spec.stride, spec.padding, spec.output_padding())?;
        // Same rule as model::Autoencoder: without a final conv, the last transposed conv is
        // the output layer.
        if cfg.final_kernel.is_some() || i + 1 < n_dec {
            h = group_norm(&mut b, &w, &format!("dec.{i}.norm"), &h, out_ch)?;
            h = b.node("Elu", &[&h], vec![attr("alpha", Attr::Float(1.0))], None);
        }
    }
    if let Some(k) = cfg.final_kernel {
        h = conv(&mut b, &w, "dec.out", &h, 1, k / 2)?;
    }
    let flat = b.i64("flat_shape", &[-1, g.padded_len as i64]);
    let h = b.op("Reshape", &[&h, &flat]);
    let pos_bias = w.init(&mut b, "dec.out.position_bias")?;
    let h = b.op("Add", &[&h, &pos_bias]);
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
    b.node("Add", &[&h, &shift], vec![], Some("params"));
    b.output("params", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d as i64)]);
    Ok(b.finish("pdiff_decoder", "p-diff decoder: standardized latent z [B, d] -> parameters [B, D] in host units"))
}

/// denoiser.onnx for a trained generator.
pub fn export_denoiser(g: &Generator) -> Result<Vec<u8>> {
    let w = Weights(g.denoiser_variables());
    let d_lat = g.latent_dim() as i64;
    let mut b = GraphBuilder::default();
    let x = b.input("x", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    let t = b.input("t", DataType::Int64, &[Dim::Named("batch")]);
    // Sinusoidal time embedding -> Linear -> SiLU -> Linear.
    let tdim = g.denoiser_config.time_dim();
    let freqs = timestep_frequencies(tdim);
    let freqs = b.f32("time_freqs", &[1, freqs.len() as i64], &freqs);
    let tf = b.node("Cast", &[&t], vec![attr("to", Attr::Int(DataType::Float as i64))], None);
    let ax1 = b.i64("axis1", &[1]);
    let tf = b.op("Unsqueeze", &[&tf, &ax1]);
    let args = b.op("Mul", &[&tf, &freqs]);
    let (s, c) = (b.op("Sin", &[&args]), b.op("Cos", &[&args]));
    let emb = b.node("Concat", &[&s, &c], vec![attr("axis", Attr::Int(1))], None);
    let emb = linear(&mut b, &w, "time.fc1", &emb)?;
    let emb = silu(&mut b, &emb);
    let temb = linear(&mut b, &w, "time.fc2", &emb)?;
    let out = match &g.denoiser_config {
        DenoiserConfig::Mlp { blocks, .. } => {
            let mut h = linear(&mut b, &w, "in", &x)?;
            for i in 0..*blocks {
                let u = b.op("Add", &[&h, &temb]);
                let u = silu(&mut b, &u);
                let u = linear(&mut b, &w, &format!("block.{i}.fc1"), &u)?;
                let u = silu(&mut b, &u);
                let u = linear(&mut b, &w, &format!("block.{i}.fc2"), &u)?;
                h = b.op("Add", &[&h, &u]);
            }
            let h = silu(&mut b, &h);
            linear(&mut b, &w, "out", &h)?
        }
        DenoiserConfig::Cnn { channels, kernel, .. } => {
            let temb = b.op("Unsqueeze", &[&temb, &ax1]);
            let mut h = b.op("Unsqueeze", &[&x, &ax1]);
            let n = channels.len() - 1;
            let mut skips: Vec<String> = Vec::new();
            for i in 0..n {
                let u = b.op("Add", &[&h, &temb]);
                h = conv(&mut b, &w, &format!("conv.{i}"), &u, 1, kernel / 2)?;
                if i + 1 == n {
                    break;
                }
                h = group_norm(&mut b, &w, &format!("norm.{i}"), &h, channels[i + 1])?;
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
    b.node("Identity", &[&out], vec![], Some("eps"));
    b.output("eps", DataType::Float, &[Dim::Named("batch"), Dim::Fixed(d_lat)]);
    Ok(b.finish("pdiff_denoiser", "p-diff denoiser: x_t [B, d], t [B] -> predicted noise [B, d]"))
}

