//! The libtorch boundary: its errors as [`Error::Torch`] (never a panic), its process-wide RNG
//! taken by one training at a time, devices, the memory a run needs against what a device has,
//! and tensors to and from ndarray.
use ndarray::{Array2, ArrayView2};
use pdiff_core::error::{Error, Result};
use pdiff_core::training::{available_memory_bytes, check_memory_against, DeviceChoice, TrainConfig};
use tch::{Device, Kind, Tensor};

/// A tch result as a pdiff result: libtorch's message in [`Error::Torch`].
pub trait TorchResult<T> {
    fn torch(self) -> Result<T>;
}

impl<T> TorchResult<T> for std::result::Result<T, tch::TchError> {
    fn torch(self) -> Result<T> {
        self.map_err(|e| Error::Torch(e.to_string()))
    }
}

/// The tch device of a [`DeviceChoice`]: CUDA when asked for and present (an error naming
/// what libtorch sees otherwise), the CPU, or CUDA when available in auto mode.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(i) => {
            let n = tch::Cuda::device_count() as usize;
            if tch::Cuda::is_available() && i < n {
                Ok(Device::Cuda(i))
            } else {
                Err(Error::DeviceUnavailable(format!("CUDA device {i} requested, libtorch sees {n} CUDA device(s)")))
            }
        }
    }
}

/// "cpu", "cuda:N".
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Exclusive use of libtorch's random number generator. It is process-wide, and a training run
/// seeds it and then draws from it at every step (initialization, batches, noise): two runs at
/// once would interleave their draws and neither would be reproducible. So trainings (and
/// generator loads, which build networks) in one process run one at a time; on a CPU libtorch
/// already uses every core for one run, on a GPU runs queue.
pub(crate) fn libtorch_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CPU cores this process may run on: its affinity mask (`sched_getaffinity`, which
/// `taskset`, cgroup cpusets and container limits narrow), at least 1. Not the machine's core
/// count: a process given 2 of 64 cores that starts 64 threads only makes them wait for each other.
pub fn available_cores() -> usize {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into the zeroed set;
    // CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (libc::CPU_COUNT(&set) as usize).max(1);
        }
    }
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The intra-op threads a training with `config` runs with on the CPU: `config.threads`, or when
/// 0, [`available_cores`].
pub fn training_threads(config: &TrainConfig) -> usize {
    if config.threads > 0 {
        config.threads
    } else {
        available_cores()
    }
}

/// libtorch's intra-op thread count for the calling thread while this guard lives (libtorch
/// keeps it per process and per calling thread: `at::set_num_threads`), restored on drop, so a
/// training's setting does not outlive it in a host process.
pub(crate) struct IntraOpThreads {
    previous: i32,
}

impl IntraOpThreads {
    pub(crate) fn set(n: usize) -> Self {
        let previous = tch::get_num_threads();
        tch::set_num_threads(n.clamp(1, i32::MAX as usize) as i32);
        IntraOpThreads { previous }
    }
}

impl Drop for IntraOpThreads {
    fn drop(&mut self) {
        if self.previous > 0 {
            tch::set_num_threads(self.previous);
        }
    }
}

/// Run libtorch work; a libtorch error becomes `Error::Torch` with libtorch's own message
/// (prefixed by `what`), never a panic. tch's infallible methods panic on a libtorch error
/// (CUDA out of memory, a device-side assertion, a shape libtorch refuses); training runs long
/// on devices that can fail, so each stage runs inside this boundary rather than through the
/// `f_` variant of every call. Any other panic is a bug of ours and unwinds on (to the C ABI's
/// panic boundary).
pub fn torch_boundary<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let text = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
            match torch_message(text) {
                Some(message) => Err(Error::Torch(format!("{what}: {message}"))),
                None => std::panic::resume_unwind(payload),
            }
        }
    }
}

/// libtorch's message in a panic of tch's `.unwrap()` on a `TchError::Torch` (its Debug form:
/// `Torch("...")`), unescaped; `None` when the panic is not a libtorch error.
fn torch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let end = panic.rfind("\")")?;
    let escaped = panic.get(start..end)?;
    // The Debug form escapes quotes, backslashes and newlines; keep the first lines readable.
    let message = escaped.replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\");
    Some(message.lines().take(3).collect::<Vec<_>>().join(" ").trim().to_string())
}

/// Refuse a training run on `config.device` that cannot fit (see [`check_memory_against`]):
/// against the GPU's free memory when it trains on CUDA, the host's available memory otherwise.
pub fn check_memory(d: usize, k: usize, config: &TrainConfig) -> Result<()> {
    check_memory_on(d, k, config, resolve_device(config.device)?)
}

pub(crate) fn check_memory_on(d: usize, k: usize, config: &TrainConfig, device: Device) -> Result<()> {
    match device {
        Device::Cuda(i) => check_memory_against(d, k, config, cuda_free_memory(i), &format!("free on CUDA device {i}")),
        _ => check_memory_against(d, k, config, available_memory_bytes(), "of memory is available"),
    }
}

/// Free memory of CUDA device `index` (cudaMemGetInfo), through the CUDA runtime that libtorch
/// loaded; None when it cannot be asked.
fn cuda_free_memory(index: usize) -> Option<u64> {
    type GetDevice = unsafe extern "C" fn(*mut i32) -> i32;
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    // SAFETY: looks up the CUDA runtime already in the process (RTLD_NOLOAD) and calls three of
    // its documented functions with valid pointers; the current device is restored.
    unsafe {
        let lib = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"].iter().find_map(|name| {
            let c = std::ffi::CString::new(*name).ok()?;
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            (!h.is_null()).then_some(h)
        })?;
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let get: GetDevice = std::mem::transmute(sym(c"cudaGetDevice")?);
        let set: SetDevice = std::mem::transmute(sym(c"cudaSetDevice")?);
        let info: MemGetInfo = std::mem::transmute(sym(c"cudaMemGetInfo")?);
        let mut current = 0;
        if get(&mut current) != 0 || set(index as i32) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        let ok = info(&mut free, &mut total) == 0;
        set(current);
        ok.then_some(free as u64)
    }
}

/// A [B, n] tensor as an array.
pub(crate) fn tensor_to_array(t: &Tensor) -> Result<Array2<f32>> {
    let size = t.size();
    let (r, c) = (size[0] as usize, size[1] as usize);
    let v = Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1])).torch()?;
    Array2::from_shape_vec((r, c), v).map_err(|e| Error::Torch(e.to_string()))
}

pub(crate) fn array_to_tensor(a: ArrayView2<'_, f32>, device: Device) -> Tensor {
    let (r, c) = a.dim();
    let v: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&v).view([r as i64, c as i64]).to_device(device)
}

/// A tensor's values as f32, flattened.
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1])).torch()
}
