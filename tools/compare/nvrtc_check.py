"""Compiles the CUDA kernel sources embedded in Rust files with NVRTC, as the binaries do at
run time, on a machine without a GPU (NVRTC needs none): a syntax or type error in a kernel
then shows here, not on a lent GPU machine.

usage: python3 tools/compare/nvrtc_check.py [RUST_FILE ...]   (default: src/ops/*_cuda.rs)
NVRTC comes from the CUDA venv of ../shared/gpu/build-cuda.sh (CUDA_VENV, default
~/.cache/cuda13-venv). Each source is compiled with NVRTC's default options (what the
binaries use) and for compute_90 (H100/H200), after the prelude of src/ops/cuda_kernels.rs as the
binaries compile it; the kernels it defines are listed.
"""
import ctypes
import glob
import os
import re
import sys


def nvrtc():
    venv = os.environ.get("CUDA_VENV", os.path.expanduser("~/.cache/cuda13-venv"))
    found = glob.glob(os.path.join(venv, "lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.*"))
    found = [f for f in found if "builtins" not in f and ".alt." not in f]
    if not found:
        sys.exit(f"no libnvrtc under {venv}: run ../shared/gpu/build-cuda.sh once")
    # NVRTC dlopens its builtins by soname; loaded first, they are found without LD_LIBRARY_PATH.
    lib_dir = os.path.dirname(found[0])
    for builtins in glob.glob(os.path.join(lib_dir, "libnvrtc-builtins.so.*")):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(found[0])


def raw_strings(path):
    return [m.group(1) for m in re.finditer(r'r#"(.*?)"#', open(path).read(), re.S)]


def sources(path):
    # The raw strings that define kernels: r#" ... "#
    return [s for s in raw_strings(path) if "__global__" in s]


# What cuda_kernels::ptx compiles before every source.
PRELUDE = "".join(raw_strings(os.path.join(os.path.dirname(__file__), "../../src/ops/cuda_kernels.rs")))


def compile_source(lib, src, name, options):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram: {rc}", ""
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, log.value.decode(), ptx


def main():
    files = sys.argv[1:] or sorted(glob.glob("src/ops/*_cuda.rs"))
    lib = nvrtc()
    failed = False
    for path in files:
        for i, src in enumerate(sources(path)):
            for options in ([], ["--gpu-architecture=compute_90"]):
                ok, log, ptx = compile_source(lib, PRELUDE + src, f"{os.path.basename(path)}#{i}", options)
                label = f"{path} source {i} {' '.join(options) or '(default options)'}"
                if not ok:
                    failed = True
                    print(f"FAILED {label}\n{log}")
                    continue
                kernels = re.findall(r"\.entry\s+(\w+)", ptx)
                print(f"ok {label}: {len(kernels)} kernels ({', '.join(kernels)})")
                if log.strip():
                    print(log)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
