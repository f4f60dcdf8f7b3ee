//! The CUDA backend (feature `cuda`): the generated source compiled by NVRTC
//! for the device's architecture, PTX cached on disk, kernels launched on
//! one stream, and every launch sequence (inference, training forward,
//! backward, optimiser) captured once as a CUDA graph and replayed, so a
//! training step costs three graph launches and no synchronisation.
//!
//! cudarc loads libcuda and libnvrtc at run time, so building needs no CUDA
//! installation; [`compile_ptx`] needs only libnvrtc (no GPU), which is how
//! CI checks that every generated kernel compiles.

use super::{cache_key, Backend, GpuError, GpuProgram, KernelArgs, Launch, Precision};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

// SAFETY: KernelArgs is repr(C) plain data laid out as `Args` in
// kernels/common.cuh.
unsafe impl DeviceRepr for KernelArgs {}

fn backend_err(what: &str, e: impl std::fmt::Display) -> GpuError {
    GpuError::Backend(format!("CUDA: {what}: {e}"))
}

/// NVRTC options for `arch` (e.g. "sm_90"): precise division and square
/// root, no flush-to-zero, so the f32 kernels round as the CPU path does.
pub fn nvrtc_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
    ]
}

/// Whether libnvrtc can be loaded (from `LD_LIBRARY_PATH` or the system).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles a program's full source for `precision` to PTX for `arch`
/// with NVRTC. Needs libnvrtc, not a GPU.
pub fn compile_ptx(
    program: &GpuProgram,
    precision: Precision,
    arch: &str,
) -> Result<String, GpuError> {
    nvrtc(program, precision, arch, |prog| {
        // SAFETY: `prog` compiled successfully; NVRTC returns its PTX with
        // a terminating NUL.
        let ptx = unsafe { cudarc::nvrtc::result::get_ptx(prog) }
            .map_err(|e| format!("reading the PTX: {e}"))?;
        Ok(unsafe { std::ffi::CStr::from_ptr(ptx.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    })
}

/// Runs NVRTC over a program's full source for `arch` and hands the
/// compiled program to `take`, which reads what the caller wants out of it.
/// Errors name the network and carry NVRTC's log.
fn nvrtc<R>(
    program: &GpuProgram,
    precision: Precision,
    arch: &str,
    take: impl FnOnce(cudarc::nvrtc::sys::nvrtcProgram) -> Result<R, String>,
) -> Result<R, GpuError> {
    use cudarc::nvrtc::result;
    use std::ffi::{CStr, CString};
    let fail = |log: String| GpuError::Compile {
        network: program.name,
        compiler: "NVRTC".to_string(),
        log,
    };
    if !nvrtc_available() {
        return Err(fail(
            "libnvrtc was not found: install it (`python3 -m pip install \
             \"nvidia-cuda-nvrtc==13.0.*\"` and add site-packages/nvidia/cu13/lib to \
             LD_LIBRARY_PATH, or a CUDA 13.0 toolkit)"
                .to_string(),
        ));
    }
    let src = CString::new(program.full_source(precision))
        .map_err(|e| fail(format!("the source holds a NUL byte: {e}")))?;
    let name = CString::new(format!("{}.cu", program.name))
        .map_err(|e| fail(format!("the program name holds a NUL byte: {e}")))?;
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| fail(format!("creating the program: {e}")))?;
    // SAFETY: `prog` is live until destroyed below, once.
    let out = unsafe {
        match result::compile_program(prog, &nvrtc_options(arch)) {
            Ok(()) => take(prog),
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(format!("compiling for {arch} ({e}): {log}"))
            }
        }
    };
    let _ = unsafe { result::destroy_program(prog) };
    out.map_err(fail)
}

/// Where compiled PTX is kept: `$SPARSENET_PTX_CACHE`, else
/// `$XDG_CACHE_HOME/sparsenet/ptx`, else `~/.cache/sparsenet/ptx`.
pub fn ptx_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPARSENET_PTX_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sparsenet").join("ptx")
}

/// Where the PTX of `program` for `precision` and `arch` is cached: named
/// by a hash of the full source and the NVRTC options, so any change
/// recompiles.
pub fn ptx_cache_path(program: &GpuProgram, precision: Precision, arch: &str) -> PathBuf {
    let opts = nvrtc_options(arch).join(" ");
    let key = cache_key(&[program.full_source(precision).as_bytes(), opts.as_bytes()]);
    ptx_cache_dir().join(format!("{}-{precision}-{key}.ptx", program.name))
}

/// Compiles `program` for `arch` into the PTX cache unless it is there
/// already (so a GPU machine can start from PTX built elsewhere: NVRTC
/// needs no GPU), and into the cubin cache too when `cubin` is set.
/// Returns the PTX cache file and whether anything compiled.
pub fn precompile(
    program: &GpuProgram,
    precision: Precision,
    arch: &str,
    cubin: bool,
) -> Result<(PathBuf, bool), GpuError> {
    let path = ptx_cache_path(program, precision, arch);
    let mut compiled = false;
    if !path.exists() {
        let ptx = compile_ptx(program, precision, arch)?;
        write_cache(&path, ptx.as_bytes())?;
        compiled = true;
    }
    let bin = cubin_cache_path(program, precision, arch);
    if cubin && !bin.exists() {
        write_cache(&bin, &compile_cubin(program, precision, arch)?)?;
        compiled = true;
    }
    Ok((path, compiled))
}

/// Where the machine code (cubin) of `program` for `arch` is cached, beside
/// its PTX and under the same key. Loading it skips the driver's PTX
/// compilation, which takes 15-40 s for the zoo's networks on an H200.
pub fn cubin_cache_path(program: &GpuProgram, precision: Precision, arch: &str) -> PathBuf {
    ptx_cache_path(program, precision, arch).with_extension("cubin")
}

/// Compiles a program's full source to machine code (cubin) for `arch`, a
/// real architecture such as "sm_90", with NVRTC (which runs the assembler
/// itself). Needs libnvrtc, not a GPU.
pub fn compile_cubin(
    program: &GpuProgram,
    precision: Precision,
    arch: &str,
) -> Result<Vec<u8>, GpuError> {
    use cudarc::nvrtc::sys as nv;
    nvrtc(program, precision, arch, |prog| {
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully; `bin` is as long as NVRTC
        // says the cubin is.
        unsafe { nv::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(|e| format!("reading the cubin's size: {e}"))?;
        if size == 0 {
            return Err(format!(
                "no machine code for {arch} (a virtual architecture?)"
            ));
        }
        let mut bin = vec![0u8; size];
        unsafe { nv::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| format!("reading the cubin: {e}"))?;
        Ok(bin)
    })
}

fn write_cache(path: &std::path::Path, bytes: &[u8]) -> Result<(), GpuError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| GpuError::Backend(format!("creating {}: {e}", dir.display())))?;
    }
    crate::files::write_atomically(path, bytes)
        .map_err(|e| GpuError::Backend(format!("writing {}: {e}", path.display())))
}

/// How the last [`Backend::compile`] got its code.
#[derive(Clone, Debug, PartialEq)]
pub enum PtxOrigin {
    /// PTX compiled by NVRTC now.
    Compiled {
        /// Wall-clock time NVRTC took.
        seconds: f64,
    },
    /// PTX from the cache (the driver compiles it to machine code).
    Cache,
    /// Machine code from the cache (`scripts/gpu-check.sh` puts it there).
    Cubin,
}

/// The CUDA [`Backend`]: one device, one stream, the compiled kernels of
/// one program, and the CUDA graphs recorded so far.
///
/// ```no_run
/// use sparsenet_runtime::gpu::cuda::CudaBackend;
///
/// let backend = CudaBackend::new(0)?; // device 0
/// println!("{} ({})", backend.device_name(), backend.arch());
/// let (free, total) = backend.memory()?;
/// println!("{} of {} MiB free", free >> 20, total >> 20);
/// // Then `GpuModel::new(backend, &model, capacity, Precision::Tf32)?` for a generated model.
/// # Ok::<(), sparsenet_runtime::gpu::GpuError>(())
/// ```
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: Vec<CudaFunction>,
    arch: String,
    /// Replayable graphs by (sequence, batch size, arguments).
    graphs: HashMap<(usize, usize, usize, KernelArgs), CudaGraph>,
    use_graphs: bool,
    /// How the last [`Backend::compile`] got its code; `None` before it.
    pub ptx_origin: Option<PtxOrigin>,
    /// Per kernel: launches and milliseconds, while profiling.
    profile: Option<Vec<(u32, f64)>>,
}

/// One kernel's share of the launches timed by [`CudaBackend::profiling`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// Index into [`GpuProgram::kernels`].
    pub kernel: usize,
    /// Launches timed.
    pub launches: u32,
    /// Milliseconds in all, each launch counted from the event before it
    /// (see [`CudaBackend::profiling`]).
    pub ms: f64,
}

impl CudaBackend {
    /// Device `ordinal`; graphs on unless `SPARSENET_CUDA_GRAPHS=0`.
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        let graphs = std::env::var("SPARSENET_CUDA_GRAPHS").map_or(true, |v| v != "0");
        Self::with_graphs(ordinal, graphs)
    }

    /// Device `ordinal`, replaying launch sequences as CUDA graphs or not.
    pub fn with_graphs(ordinal: usize, use_graphs: bool) -> Result<Self, GpuError> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::Backend(
                "CUDA: libcuda was not found: is an NVIDIA driver installed and on \
                 LD_LIBRARY_PATH?"
                    .to_string(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| backend_err("opening the device", e))?;
        // One stream orders everything; cudarc's per-buffer events would
        // only add work (and are not allowed inside a graph capture).
        // SAFETY: all work of this backend goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| backend_err("creating a stream", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| backend_err("reading the compute capability", e))?;
        Ok(CudaBackend {
            ctx,
            stream,
            functions: Vec::new(),
            arch: format!("sm_{major}{minor}"),
            graphs: HashMap::new(),
            use_graphs,
            ptx_origin: None,
            profile: None,
        })
    }

    /// The device's name as the driver reports it (e.g. `NVIDIA H200`).
    pub fn device_name(&self) -> String {
        self.ctx
            .name()
            .unwrap_or_else(|_| "unknown device".to_string())
    }

    /// The device's architecture as NVRTC names it, e.g. `sm_90`: the
    /// kernels are compiled for it.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Waits for all launched work.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(|e| backend_err("synchronising", e))
    }

    /// Times every kernel from now on (`true`) or stops (`false`): each
    /// launch sequence then runs kernel by kernel, without its graph, with
    /// an event between consecutive kernels, and waits for them. An
    /// interval is the kernel's run plus any gap before it started (the
    /// host enqueues about one launch per 5 us), so short kernels read
    /// long; the long ones, which decide a step's time, read true.
    pub fn profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![(0, 0.0); self.functions.len()]);
    }

    /// The times gathered since profiling was switched on, longest first.
    pub fn kernel_times(&self) -> Vec<KernelTime> {
        let mut v: Vec<KernelTime> = self
            .profile
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, t)| t.0 > 0)
            .map(|(kernel, &(launches, ms))| KernelTime {
                kernel,
                launches,
                ms,
            })
            .collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        v
    }

    /// One launch sequence, kernel by kernel between timing events.
    fn run_profiled(
        &mut self,
        launches: &[Launch],
        n: usize,
        args: &KernelArgs,
    ) -> Result<(), GpuError> {
        let timed = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = |b: &Self| {
            b.stream
                .record_event(timed)
                .map_err(|e| backend_err("recording an event", e))
        };
        let mut marks = vec![event(self)?];
        for l in launches {
            self.launch(l.kernel, l.blocks(n), l.block, args)?;
            marks.push(event(self)?);
        }
        self.synchronize()?;
        for (l, pair) in launches.iter().zip(marks.windows(2)) {
            let ms = pair[0]
                .elapsed_ms(&pair[1])
                .map_err(|e| backend_err("reading an event", e))?;
            if let Some(t) = self.profile.as_mut().and_then(|p| p.get_mut(l.kernel)) {
                t.0 += 1;
                t.1 += ms as f64;
            }
        }
        Ok(())
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), GpuError> {
        self.ctx
            .mem_get_info()
            .map_err(|e| backend_err("reading memory use", e))
    }

    fn load_ptx(&mut self, program: &GpuProgram, precision: Precision) -> Result<String, GpuError> {
        let path = ptx_cache_path(program, precision, &self.arch);
        if let Ok(ptx) = std::fs::read_to_string(&path) {
            self.ptx_origin = Some(PtxOrigin::Cache);
            return Ok(ptx);
        }
        let t = std::time::Instant::now();
        let ptx = compile_ptx(program, precision, &self.arch)?;
        self.ptx_origin = Some(PtxOrigin::Compiled {
            seconds: t.elapsed().as_secs_f64(),
        });
        // A cache that cannot be written only costs the next start a compile.
        let _ = write_cache(&path, ptx.as_bytes());
        Ok(ptx)
    }
}

impl Backend<f32> for CudaBackend {
    type Buffer = CudaSlice<f32>;

    fn compile(&mut self, program: &GpuProgram, precision: Precision) -> Result<(), GpuError> {
        // Cached machine code for this device if there is any (a cubin the
        // driver refuses, e.g. from another NVRTC, falls back to PTX).
        let cubin = std::fs::read(cubin_cache_path(program, precision, &self.arch))
            .ok()
            .and_then(|bin| self.ctx.load_module(Ptx::from_binary(bin)).ok());
        let module = match cubin {
            Some(m) => {
                self.ptx_origin = Some(PtxOrigin::Cubin);
                m
            }
            None => {
                let ptx = self.load_ptx(program, precision)?;
                self.ctx
                    .load_module(Ptx::from_src(ptx))
                    .map_err(|e| backend_err(&format!("loading the PTX of {}", program.name), e))?
            }
        };
        self.functions = program
            .kernels
            .iter()
            .map(|k| {
                module
                    .load_function(k)
                    .map_err(|e| backend_err(&format!("finding kernel {k}"), e))
            })
            .collect::<Result<_, _>>()?;
        self.graphs.clear();
        if self.profile.is_some() {
            self.profiling(true);
        }
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<CudaSlice<f32>, GpuError> {
        self.stream
            .alloc_zeros::<f32>(len.max(1))
            .map_err(|e| backend_err(&format!("allocating {len} floats"), e))
    }

    fn upload(
        &mut self,
        dst: &mut CudaSlice<f32>,
        offset: usize,
        src: &[f32],
    ) -> Result<(), GpuError> {
        let end = offset + src.len();
        if end > dst.len() {
            return Err(GpuError::Backend(format!(
                "CUDA: upload of {} floats at {offset} overruns a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        let mut view = dst.slice_mut(offset..end);
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| backend_err("copying to the device", e))
    }

    fn upload_i32(&mut self, dst: &mut CudaSlice<f32>, src: &[i32]) -> Result<(), GpuError> {
        // Same size, any bits: the kernels read this buffer as `int`.
        let as_f32: &[f32] = bytemuck::cast_slice(src);
        self.upload(dst, 0, as_f32)
    }

    fn upload_bytes(&mut self, dst: &mut CudaSlice<f32>, src: &[u8]) -> Result<(), GpuError> {
        // Any bits, in f32-sized words (the last one zero-padded); the
        // kernels read this buffer as `unsigned char`.
        let words: Vec<f32> = src
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                f32::from_ne_bytes(w)
            })
            .collect();
        self.upload(dst, 0, &words)
    }

    fn download(&mut self, src: &CudaSlice<f32>, dst: &mut [f32]) -> Result<(), GpuError> {
        let n = dst.len();
        if n > src.len() {
            return Err(GpuError::Backend(format!(
                "CUDA: download of {n} floats from a buffer of {}",
                src.len()
            )));
        }
        self.stream
            .memcpy_dtoh(&src.slice(0..n), dst)
            .map_err(|e| backend_err("copying from the device", e))?;
        self.synchronize()
    }

    fn address(&self, buf: &CudaSlice<f32>) -> u64 {
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        ptr
    }

    fn launch(
        &mut self,
        kernel: usize,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), GpuError> {
        let f = self.functions.get(kernel).ok_or_else(|| {
            GpuError::Backend(format!("CUDA: no kernel {kernel} (compile first)"))
        })?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(args);
        // SAFETY: every generated kernel takes exactly one `Args` by value,
        // and the addresses in it are live allocations of the model, sized
        // by the plan the kernels were generated from.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(|e| backend_err("launching a kernel", e))
    }

    fn run(&mut self, launches: &[Launch], n: usize, args: &KernelArgs) -> Result<(), GpuError> {
        if self.profile.is_some() {
            return self.run_profiled(launches, n, args);
        }
        if !self.use_graphs {
            for l in launches {
                self.launch(l.kernel, l.blocks(n), l.block, args)?;
            }
            return Ok(());
        }
        let key = (launches.as_ptr() as usize, launches.len(), n, *args);
        if !self.graphs.contains_key(&key) {
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| backend_err("starting a graph capture", e))?;
            let mut captured = Ok(());
            for l in launches {
                captured = self.launch(l.kernel, l.blocks(n), l.block, args);
                if captured.is_err() {
                    break;
                }
            }
            let graph = self
                .stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| backend_err("instantiating a graph", e))?;
            captured?;
            let graph = graph.ok_or_else(|| {
                GpuError::Backend("CUDA: graph capture recorded nothing".to_string())
            })?;
            self.graphs.insert(key, graph);
        }
        self.graphs[&key]
            .launch()
            .map_err(|e| backend_err("replaying a graph", e))
    }
}
