//! Links the kernel program's calls to `bpf_rdonly_cast`, which aya 0.14 cannot link.
//!
//! `bpf_rdonly_cast` is a kernel function (kfunc, Linux 6.2+) that turns a kernel address
//! into a read-only BTF pointer: the program may then load the socket's members directly,
//! and the verifier makes those loads safe against faults, instead of calling
//! `bpf_probe_read_kernel` and copying through a stack buffer. That makes the program
//! markedly cheaper (see BENCHMARKS.md).
//!
//! libbpf links kfunc calls; aya 0.14 does not. So the direct-read program
//! ([`abi::PROGRAM_CAST`]) calls a helper id that no kernel has
//! ([`abi::RDONLY_CAST_MARKER`]), and [`link_rdonly_cast`] rewrites each such call
//! instruction into a kfunc call before the object goes to aya: `src_reg` becomes
//! `BPF_PSEUDO_KFUNC_CALL` and `imm` the function's id in the running kernel's BTF. On a
//! kernel without the function nothing is rewritten, and the loader uses the probe-read
//! program ([`abi::PROGRAM_RAW`]).

use aya_obj::btf::{Btf, BtfKind};
use object::{Object, ObjectSection, SectionKind};

use crate::abi;

/// Opcode of a call instruction (`BPF_JMP | BPF_CALL`).
const BPF_CALL: u8 = 0x85;
/// `src_reg` of a call to a kernel function named by BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
/// Size of one eBPF instruction.
const INSN: usize = 8;

/// The id of the kernel function `bpf_rdonly_cast` in the running kernel's BTF, if it
/// has one.
pub(crate) fn rdonly_cast_id(btf: &Btf) -> Option<u32> {
    btf.id_by_type_name_kind("bpf_rdonly_cast", BtfKind::Func).ok()
}

/// The instruction the C source compiles its marker call to: a helper call (`src_reg` 0)
/// with the marker as helper id. Object files of `-target bpf` are little-endian.
fn marker_call() -> [u8; INSN] {
    let mut insn = [0u8; INSN];
    insn[0] = BPF_CALL;
    insn[4..].copy_from_slice(&abi::RDONLY_CAST_MARKER.to_le_bytes());
    insn
}

/// `obj` with every marker call in its code sections turned into a call of the kernel
/// function with BTF id `btf_id`, and how many calls were rewritten. `None` when `obj`
/// is not an ELF object.
pub(crate) fn link_rdonly_cast(obj: &[u8], btf_id: u32) -> Option<(Vec<u8>, usize)> {
    let file = object::File::parse(obj).ok()?;
    let marker = marker_call();
    let mut out = obj.to_vec();
    let mut linked = 0;
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let (Ok(start), Ok(size)) = (usize::try_from(start), usize::try_from(size)) else {
            continue;
        };
        let Some(code) = out.get_mut(start..start.saturating_add(size)) else {
            continue;
        };
        for insn in code.chunks_exact_mut(INSN) {
            if insn == marker {
                insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
                insn[4..].copy_from_slice(&btf_id.to_le_bytes());
                linked += 1;
            }
        }
    }
    Some((out, linked))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every call in the code sections of `obj`: (function, offset, src_reg, imm), the
    /// function being the symbol whose code holds the call.
    fn calls(obj: &[u8]) -> Vec<(String, usize, u8, i32)> {
        use object::ObjectSymbol;
        let file = object::File::parse(obj).unwrap();
        let mut v = Vec::new();
        for s in file.sections().filter(|s| s.kind() == SectionKind::Text) {
            let funcs: Vec<_> = file
                .symbols()
                .filter(|y| y.section_index() == Some(s.index()) && y.kind() == object::SymbolKind::Text)
                .map(|y| (y.name().unwrap().to_string(), y.address(), y.size()))
                .collect();
            for (i, insn) in s.data().unwrap().chunks_exact(INSN).enumerate() {
                if insn[0] == BPF_CALL {
                    let at = (i * INSN) as u64;
                    let func = funcs
                        .iter()
                        .find(|(_, a, n)| (*a..a + n).contains(&at))
                        .map_or_else(|| "?".to_string(), |f| f.0.clone());
                    let imm = i32::from_le_bytes(insn[4..].try_into().unwrap());
                    v.push((func, i * INSN, insn[1] >> 4, imm));
                }
            }
        }
        v
    }

    #[test]
    fn only_the_marker_calls_of_the_direct_program_are_rewritten() {
        let obj = crate::object();
        let before = calls(obj);
        let markers: Vec<_> = before.iter().filter(|c| c.3 == abi::RDONLY_CAST_MARKER).collect();
        assert!(!markers.is_empty(), "the object has no marker call");
        // Only the direct program and the out-of-line functions it alone calls (named
        // *_direct in the C source) hold them: the probe-read programs, which call the
        // *_probe ones, load on kernels without bpf_rdonly_cast.
        for (func, ..) in &markers {
            assert!(
                func == abi::PROGRAM_CAST || func.ends_with("_direct"),
                "marker call in {func}"
            );
        }
        for (func, ..) in &before {
            if func == abi::PROGRAM_RAW || func == abi::PROGRAM || func.ends_with("_probe") {
                assert!(!markers.iter().any(|m| &m.0 == func), "marker call in {func}");
            }
        }
        assert!(markers.iter().any(|m| m.0 == abi::PROGRAM_CAST));
        let (linked, n) = link_rdonly_cast(obj, 4242).unwrap();
        assert_eq!(n, markers.len());
        assert_eq!(linked.len(), obj.len());
        let after = calls(&linked);
        assert_eq!(after.len(), before.len());
        for (b, a) in before.iter().zip(&after) {
            if b.3 == abi::RDONLY_CAST_MARKER {
                assert_eq!((a.2, a.3), (BPF_PSEUDO_KFUNC_CALL, 4242), "{b:?}");
            } else {
                assert_eq!(a, b);
            }
        }
        // Nothing but those instructions changed: at most src_reg and imm of each.
        let changed = obj.iter().zip(&linked).filter(|(x, y)| x != y).count();
        assert!(changed <= n * 5, "{changed} bytes changed for {n} calls");
    }

    #[test]
    fn not_an_object_is_not_linked() {
        assert!(link_rdonly_cast(b"not an ELF object", 1).is_none());
    }
}
