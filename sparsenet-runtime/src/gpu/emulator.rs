//! The CPU stand-in for a GPU: the generated CUDA C source compiled as C++
//! by the host compiler (`$CXX`, else `g++`) with `-DSPARSENET_EMULATE`,
//! loaded as a shared library, each launch run block by block (blocks in
//! parallel on rayon's threads). A block's threads run one after another
//! where they never wait for each other (`SN_EMU`), or as fibers that meet
//! at `__syncthreads` and at the warp collectives (shuffles, votes,
//! `mma.sync` with the PTX ISA's fragment layouts) where they cooperate
//! (`SN_EMU_COOP`, `emulator_block.h`). A deadlock, or a wait in a kernel
//! not declared cooperative, is an error naming the kernel.
//!
//! It checks what can be checked without a GPU: that every kernel computes
//! what the CPU path computes, that the launch sequences are complete and in
//! the right order, that the memory plan has no overlaps that matter, and
//! that cooperating threads meet where the kernel says. It says nothing
//! about speed; between two barriers it runs the threads in one order (the
//! order alternates from one barrier to the next), not all orders.

use super::{cache_key, Backend, GpuError, GpuProgram, KernelArgs, Precision};
use crate::Float;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::Command;

/// A kernel's emulated entry point: runs one block; returns null, or a
/// C string saying what went wrong (`emulator_block.h`).
type BlockFn =
    unsafe extern "C" fn(*const KernelArgs, u32, u32, u32) -> *const std::os::raw::c_char;

/// A name part no other compilation uses at the same time: the process and
/// a counter (two threads of one process may compile the same program).
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// The cooperative threads' machinery, included by kernels/emulate.cuh in
/// the emulator's build.
const EMULATOR_BLOCK_H: &str = include_str!("emulator_block.h");

/// Host memory standing in for device memory, held as a raw allocation
/// because kernels write it through the addresses they are given.
pub struct HostBuffer<T> {
    ptr: *mut T,
    len: usize,
}

impl<T: Float> HostBuffer<T> {
    fn zeroed(len: usize) -> Self {
        let b: Box<[T]> = vec![T::zero(); len].into_boxed_slice();
        HostBuffer {
            len,
            ptr: Box::into_raw(b) as *mut T,
        }
    }

    fn slice(&self) -> &[T] {
        // SAFETY: ptr/len come from a live boxed slice that only this value frees.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` excludes other Rust references.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T> Drop for HostBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::into_raw of a slice of this length.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

/// Runs kernels in element type `T` (`f32` as on the GPU, or `f64`).
pub struct Emulator<T = f32> {
    // Field order: the function pointers must not outlive the library.
    kernels: Vec<BlockFn>,
    /// The kernels' names, for error messages.
    names: Vec<&'static str>,
    library: Option<libloading::Library>,
    /// Where the compiled library came from (for messages and tests).
    pub library_path: Option<PathBuf>,
    _element: PhantomData<T>,
}

impl<T: Float> Default for Emulator<T> {
    fn default() -> Self {
        Emulator {
            kernels: Vec::new(),
            names: Vec::new(),
            library: None,
            library_path: None,
            _element: PhantomData,
        }
    }
}

impl<T: Float> Emulator<T> {
    /// An emulator with nothing compiled yet ([`Backend::compile`] builds
    /// the program's library, cached under `$SPARSENET_EMULATOR_CACHE`, else
    /// the system's temporary directory, by a hash of the source, the
    /// compiler and its flags).
    pub fn new() -> Self {
        Self::default()
    }

    /// The C type the kernels are compiled for.
    fn real() -> &'static str {
        match std::mem::size_of::<T>() {
            4 => "float",
            8 => "double",
            _ => unreachable!("Float is f32 or f64"),
        }
    }

    /// Writes `emulator_block.h` where the compiler finds it, in a folder
    /// named by its hash (written to a temporary name, then renamed, so that
    /// concurrent compilations never read half a file); returns the folder.
    fn write_block_header(dir: &std::path::Path) -> Result<PathBuf, GpuError> {
        let include = dir.join(format!(
            "include-{}",
            cache_key(&[EMULATOR_BLOCK_H.as_bytes()])
        ));
        let path = include.join("sparsenet_emulator_block.h");
        if !path.exists() {
            let io = |e: std::io::Error| {
                GpuError::Backend(format!("emulator: cannot write {}: {e}", path.display()))
            };
            std::fs::create_dir_all(&include).map_err(io)?;
            let tmp = include.join(format!("block.{}.tmp", unique_suffix()));
            std::fs::write(&tmp, EMULATOR_BLOCK_H).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(include)
    }

    fn cache_dir() -> PathBuf {
        std::env::var_os("SPARSENET_EMULATOR_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("sparsenet-emulator"))
    }
}

impl<T: Float> Backend<T> for Emulator<T> {
    type Buffer = HostBuffer<T>;

    fn compile(&mut self, program: &GpuProgram, precision: Precision) -> Result<(), GpuError> {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
        let real = format!("-DSN_REAL={}", Self::real());
        let flags = [
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            "-DSPARSENET_EMULATE",
            &real,
        ];
        let source = program.full_source(precision);
        let key = cache_key(&[
            source.as_bytes(),
            EMULATOR_BLOCK_H.as_bytes(),
            cxx.as_bytes(),
            flags.join(" ").as_bytes(),
        ]);
        let dir = Self::cache_dir();
        let include = Self::write_block_header(&dir)?;
        let lib_path = dir.join(format!(
            "{}-{}-{precision}-{key}.so",
            program.name,
            Self::real()
        ));
        if !lib_path.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                GpuError::Backend(format!("emulator: cannot create {}: {e}", dir.display()))
            })?;
            let src_path = dir.join(format!("{}-{key}.cpp", program.name));
            std::fs::write(&src_path, &source).map_err(|e| {
                GpuError::Backend(format!(
                    "emulator: cannot write {}: {e}",
                    src_path.display()
                ))
            })?;
            // Compile to a unique name, then rename: concurrent tests never
            // load a half-written library.
            let tmp = dir.join(format!("{}-{key}.{}.tmp.so", program.name, unique_suffix()));
            let out = Command::new(&cxx)
                .args(flags)
                .arg("-I")
                .arg(&include)
                .arg("-x")
                .arg("c++")
                .arg(&src_path)
                .arg("-o")
                .arg(&tmp)
                .output()
                .map_err(|e| GpuError::Compile {
                    network: program.name,
                    compiler: cxx.clone(),
                    log: format!(
                        "cannot run `{cxx}` ({e}); the GPU emulator needs a C++17 compiler \
                         (Debian: apt install g++), or set CXX"
                    ),
                })?;
            if !out.status.success() {
                return Err(GpuError::Compile {
                    network: program.name,
                    compiler: cxx,
                    log: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            std::fs::rename(&tmp, &lib_path).map_err(|e| {
                GpuError::Backend(format!("emulator: cannot rename {}: {e}", tmp.display()))
            })?;
        }
        // SAFETY: the library is our own generated code, compiled just now
        // or earlier from the same source; loading it runs no initialisers
        // beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&lib_path) }.map_err(|e| {
            GpuError::Backend(format!("emulator: cannot load {}: {e}", lib_path.display()))
        })?;
        let mut kernels = Vec::with_capacity(program.kernels.len());
        for name in program.kernels {
            let sym = format!("emu_{name}");
            // SAFETY: SN_EMU in kernels/emulate.cuh defines every emu_ entry
            // point with exactly this signature.
            let f: libloading::Symbol<'_, BlockFn> =
                unsafe { lib.get(sym.as_bytes()) }.map_err(|e| {
                    GpuError::Backend(format!(
                        "emulator: {} lacks kernel {sym}: {e}",
                        lib_path.display()
                    ))
                })?;
            kernels.push(*f);
        }
        self.kernels = kernels;
        self.names = program.kernels.to_vec();
        self.library = Some(lib);
        self.library_path = Some(lib_path);
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<HostBuffer<T>, GpuError> {
        Ok(HostBuffer::zeroed(len))
    }

    fn upload(
        &mut self,
        dst: &mut HostBuffer<T>,
        offset: usize,
        src: &[T],
    ) -> Result<(), GpuError> {
        let end = offset + src.len();
        if end > dst.len {
            return Err(GpuError::Backend(format!(
                "emulator: upload of {} floats at {offset} overruns a buffer of {}",
                src.len(),
                dst.len
            )));
        }
        dst.slice_mut()[offset..end].copy_from_slice(src);
        Ok(())
    }

    fn upload_i32(&mut self, dst: &mut HostBuffer<T>, src: &[i32]) -> Result<(), GpuError> {
        self.upload_bytes(dst, bytemuck::cast_slice(src))
    }

    fn upload_bytes(&mut self, dst: &mut HostBuffer<T>, src: &[u8]) -> Result<(), GpuError> {
        let bytes = src.len();
        if bytes > dst.len * std::mem::size_of::<T>() {
            return Err(GpuError::Backend(format!(
                "emulator: {bytes} bytes do not fit a buffer of {} elements",
                dst.len
            )));
        }
        // SAFETY: the destination holds at least `bytes` bytes (checked).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.ptr as *mut u8, bytes) };
        Ok(())
    }

    fn download(&mut self, src: &HostBuffer<T>, dst: &mut [T]) -> Result<(), GpuError> {
        let n = dst.len();
        if n > src.len {
            return Err(GpuError::Backend(format!(
                "emulator: download of {n} floats from a buffer of {}",
                src.len
            )));
        }
        dst.copy_from_slice(&src.slice()[..n]);
        Ok(())
    }

    fn address(&self, buf: &HostBuffer<T>) -> u64 {
        buf.ptr as u64
    }

    fn launch(
        &mut self,
        kernel: usize,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), GpuError> {
        let f = *self.kernels.get(kernel).ok_or_else(|| {
            GpuError::Backend(format!("emulator: no kernel {kernel} (compile first)"))
        })?;
        let failed = (0..blocks).into_par_iter().find_map_first(|b| {
            // SAFETY: the arguments address live buffers of this model, sized
            // by the plan the kernels were generated from; blocks write
            // disjoint elements.
            let err = unsafe { f(args as *const KernelArgs, b, blocks, threads) };
            // SAFETY: a non-null result is a NUL-terminated string that lives
            // in the library (a constant, or a thread-local buffer of the
            // thread that just ran the block: read here, on that thread).
            (!err.is_null()).then(|| {
                (
                    b,
                    unsafe { std::ffi::CStr::from_ptr(err) }
                        .to_string_lossy()
                        .into_owned(),
                )
            })
        });
        if let Some((b, why)) = failed {
            return Err(GpuError::Backend(format!(
                "emulator: kernel {} (block {b} of {blocks}): {why}",
                self.names.get(kernel).copied().unwrap_or("?")
            )));
        }
        Ok(())
    }
}
