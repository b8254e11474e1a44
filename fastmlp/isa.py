"""The CPU that Numba compiles for, and the micro-kernel family (codegen.FAMILIES) shaped for its register file.

Numba compiles for NUMBA_CPU_NAME and NUMBA_CPU_FEATURES when they are set, and for the host otherwise; note that
NUMBA_CPU_NAME alone keeps the *host's* features (on an AVX-512 machine, `NUMBA_CPU_NAME=haswell` still compiles
AVX-512 code): `NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=` (empty) is a real Haswell, features from the name
(ISA_ENV).  The family is read from what LLVM makes of that target, not from a table of CPU names: one 16-float
FMA compiled for it shows the widest vector registers with FMA (512-bit zmm, 256-bit ymm), which decides the family.
It is decided once per process, and it is a function of the target alone, which Numba's disk cache keys its entries
by: a cache never hands one family's drivers to another.
"""
import functools

# Environments that compile for a narrower family on any x86 machine that has it (fastmlp bench --isa)
ISA_ENV = {"avx2": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}}

_PROBE = """
define void @probe(ptr %p) {
  %v = load <16 x float>, ptr %p
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %v, <16 x float> %v, <16 x float> %v)
  store <16 x float> %r, ptr %p
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""


def compile_target():
    """(LLVM CPU name, feature string) that Numba compiles for, as its code generator reads them ('' features: the
    name's own)."""
    from numba.core.registry import cpu_target
    _, name, features = cpu_target.target_context.codegen().magic_tuple()
    return name, features


def family_of(name, features):
    """The family name for an LLVM CPU name and feature string: 'avx512' where a 16-float FMA compiles to one
    512-bit instruction, 'avx2' where it compiles to 256-bit FMAs, 'portable' otherwise (no FMA, or not x86)."""
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    name = llvm.get_host_cpu_name() if name == "host" else name   # NUMBA_CPU_NAME=host: the host's CPU
    machine = llvm.Target.from_default_triple().create_target_machine(cpu=name, features=features)
    asm = machine.emit_assembly(llvm.parse_assembly(_PROBE))
    if "vfmadd" not in asm:
        return "portable"
    return "avx512" if "zmm" in asm else "avx2" if "ymm" in asm else "portable"


@functools.cache
def family():
    """The name of the kernel family this process compiles (codegen.FAMILIES), decided once."""
    return family_of(*compile_target())


def target_info():
    """What provenance records: the kernel family, the LLVM CPU name, and where its features came from."""
    import numba
    name, _ = compile_target()
    given = numba.config.CPU_FEATURES
    features = "host" if given is None else "the CPU name's" if given == "" else f"NUMBA_CPU_FEATURES={given}"
    return {"kernels": family(), "llvm_target": name, "llvm_features": features}
