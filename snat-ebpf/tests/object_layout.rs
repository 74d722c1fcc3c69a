//! Without root: the committed kernel object parses, has the program, maps and globals the
//! loader uses, and every struct shared with Rust has the same size and member offsets in
//! the object's BTF as its `#[repr(C)]` mirror in `snat_ebpf::abi`.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};

use object::{Object, ObjectSection, ObjectSymbol};
use snat_ebpf::abi::{
    self, CpuState, FlowCounts, FlowKey, ListenInfo, ListenKey, Owner, RawEvent, RingPos, SockInfo, SockSlot,
};

/// A struct as described by BTF: size and member byte offsets by name.
#[derive(Debug)]
struct BtfStruct {
    size: u32,
    members: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn cstr(strings: &[u8], off: u32) -> String {
    let s = &strings[off as usize..];
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// Parse the named structs out of a raw .BTF section (little endian).
fn btf_structs(btf: &[u8]) -> HashMap<String, BtfStruct> {
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(btf, 4) as usize;
    let type_off = u32_at(btf, 8) as usize;
    let type_len = u32_at(btf, 12) as usize;
    let str_off = u32_at(btf, 16) as usize;
    let str_len = u32_at(btf, 20) as usize;
    let types = &btf[hdr_len + type_off..hdr_len + type_off + type_len];
    let strings = &btf[hdr_len + str_off..hdr_len + str_off + str_len];
    let mut out = HashMap::new();
    let mut p = 0;
    while p < types.len() {
        let name_off = u32_at(types, p);
        let info = u32_at(types, p + 4);
        let size = u32_at(types, p + 8);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        p += 12;
        let extra = match kind {
            1 => 4,                    // INT
            3 => 12,                   // ARRAY
            4 | 5 => vlen * 12,        // STRUCT, UNION
            6 => vlen * 8,             // ENUM
            13 => vlen * 8,            // FUNC_PROTO
            14 => 4,                   // VAR
            15 => vlen * 12,           // DATASEC
            17 => 4,                   // DECL_TAG
            19 => vlen * 12,           // ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            k => panic!("unknown BTF kind {k}"),
        };
        if kind == 4 && name_off != 0 {
            let mut members = HashMap::new();
            for i in 0..vlen {
                let m = p + i * 12;
                let bits = u32_at(types, m + 8);
                let bit_off = if kind_flag { bits & 0x00ff_ffff } else { bits };
                members.insert(cstr(strings, u32_at(types, m)), bit_off / 8);
            }
            out.insert(cstr(strings, name_off), BtfStruct { size, members });
        }
        p += extra;
    }
    out
}

fn check(structs: &HashMap<String, BtfStruct>, name: &str, size: usize, offsets: &[(&str, usize)]) {
    let s = structs
        .get(name)
        .unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"));
    assert_eq!(s.size as usize, size, "size of struct {name}");
    assert_eq!(
        s.members.len(),
        offsets.len(),
        "struct {name} has members {:?}",
        s.members
    );
    for (m, off) in offsets {
        assert_eq!(s.members.get(*m).copied(), Some(*off as u32), "offset of {name}.{m}");
    }
}

#[test]
fn structs_match_their_rust_mirrors() {
    let obj = object::File::parse(snat_ebpf::object()).expect("committed object parses as ELF");
    let btf = obj.section_by_name(".BTF").expect(".BTF section").data().unwrap();
    let s = btf_structs(btf);
    check(
        &s,
        "tcp_event",
        size_of::<RawEvent>(),
        &[
            ("ts_ns", offset_of!(RawEvent, ts_ns)),
            ("duration_ns", offset_of!(RawEvent, duration_ns)),
            ("cgroup_id", offset_of!(RawEvent, cgroup_id)),
            ("pid", offset_of!(RawEvent, pid)),
            ("netns", offset_of!(RawEvent, netns)),
            ("error", offset_of!(RawEvent, error)),
            ("family", offset_of!(RawEvent, family)),
            ("sport", offset_of!(RawEvent, sport)),
            ("dport", offset_of!(RawEvent, dport)),
            ("kind", offset_of!(RawEvent, kind)),
            ("prev_state", offset_of!(RawEvent, prev_state)),
            ("flags", offset_of!(RawEvent, flags)),
            ("direction", offset_of!(RawEvent, direction)),
            ("pad", offset_of!(RawEvent, pad)),
            ("saddr", offset_of!(RawEvent, saddr)),
            ("daddr", offset_of!(RawEvent, daddr)),
            ("comm", offset_of!(RawEvent, comm)),
        ],
    );
    // The loader reads `stats` and tests set `busy`; the rest is opaque bytes of the
    // right sizes.
    check(
        &s,
        "cpu_state",
        size_of::<CpuState>(),
        &[
            ("busy", offset_of!(CpuState, busy)),
            ("pad", offset_of!(CpuState, pad)),
            ("tcp_prot", offset_of!(CpuState, tcp_prot)),
            ("stats", offset_of!(CpuState, stats)),
            ("last", offset_of!(CpuState, last)),
            ("listener", offset_of!(CpuState, listener)),
            ("x", offset_of!(CpuState, x)),
            ("guard", offset_of!(CpuState, guard)),
        ],
    );
    check(
        &s,
        "ring_pos",
        size_of::<RingPos>(),
        &[
            ("head", offset_of!(RingPos, head)),
            ("pad0", offset_of!(RingPos, pad0)),
            ("tail", offset_of!(RingPos, tail)),
            ("pad1", offset_of!(RingPos, pad1)),
        ],
    );
    check(
        &s,
        "flow_key",
        size_of::<FlowKey>(),
        &[
            ("netns", offset_of!(FlowKey, netns)),
            ("family", offset_of!(FlowKey, family)),
            ("port", offset_of!(FlowKey, port)),
            ("direction", offset_of!(FlowKey, direction)),
            ("pad", offset_of!(FlowKey, pad)),
            ("saddr", offset_of!(FlowKey, saddr)),
            ("daddr", offset_of!(FlowKey, daddr)),
        ],
    );
    check(
        &s,
        "flow_counts",
        size_of::<FlowCounts>(),
        &[
            ("connects", offset_of!(FlowCounts, connects)),
            ("accepts", offset_of!(FlowCounts, accepts)),
            ("failed_connects", offset_of!(FlowCounts, failed_connects)),
            ("closes", offset_of!(FlowCounts, closes)),
            ("open", offset_of!(FlowCounts, open)),
        ],
    );
    check(
        &s,
        "owner",
        size_of::<Owner>(),
        &[
            ("cgroup_id", offset_of!(Owner, cgroup_id)),
            ("pid", offset_of!(Owner, pid)),
            ("tid", offset_of!(Owner, tid)),
            ("comm", offset_of!(Owner, comm)),
        ],
    );
    check(
        &s,
        "sock_slot",
        size_of::<SockSlot>(),
        &[
            ("sk", offset_of!(SockSlot, sk)),
            ("flags", offset_of!(SockSlot, flags)),
            ("flow_id", offset_of!(SockSlot, flow_id)),
        ],
    );
    check(
        &s,
        "sock_info",
        size_of::<SockInfo>(),
        &[
            ("sk", offset_of!(SockInfo, sk)),
            ("owner", offset_of!(SockInfo, owner)),
            ("key", offset_of!(SockInfo, key)),
            ("sport", offset_of!(SockInfo, sport)),
            ("dport", offset_of!(SockInfo, dport)),
            ("established_ns", offset_of!(SockInfo, established_ns)),
            ("flags", offset_of!(SockInfo, flags)),
            ("flow_id", offset_of!(SockInfo, flow_id)),
        ],
    );
    check(
        &s,
        "listen_key",
        size_of::<ListenKey>(),
        &[
            ("netns", offset_of!(ListenKey, netns)),
            ("port", offset_of!(ListenKey, port)),
            ("pad", offset_of!(ListenKey, pad)),
        ],
    );
    check(
        &s,
        "listen_info",
        size_of::<ListenInfo>(),
        &[
            ("owner", offset_of!(ListenInfo, owner)),
            ("sk", offset_of!(ListenInfo, sk)),
        ],
    );
}

#[test]
fn maps_have_the_key_and_value_sizes_the_loader_uses() {
    let obj = aya_obj::Object::parse(snat_ebpf::object()).expect("aya-obj parses the committed object");
    let expect: [(&str, u32, u32); 12] = [
        (abi::MAP_FLOWS, size_of::<FlowKey>() as u32, 4),
        (abi::MAP_FLOW_COUNTS, 4, size_of::<FlowCounts>() as u32),
        (abi::MAP_FLOW_NEXT, 4, 4),
        (abi::MAP_SOCKS, 4, size_of::<SockInfo>() as u32),
        (abi::MAP_FAST_SOCKS, 4, size_of::<SockSlot>() as u32),
        (
            abi::MAP_LISTENERS,
            size_of::<ListenKey>() as u32,
            size_of::<ListenInfo>() as u32,
        ),
        (abi::MAP_LISTEN_GEN, 4, 4),
        (abi::MAP_NETNS_ALLOW, 4, 1),
        (abi::MAP_CPU_STATE, 4, size_of::<CpuState>() as u32),
        (abi::MAP_CPU_EVENTS, 4, size_of::<RawEvent>() as u32),
        (abi::MAP_CPU_POS, 4, size_of::<RingPos>() as u32),
        (abi::MAP_WAKEUPS, 0, 0),
    ];
    for (name, k, v) in expect {
        let m = obj.maps.get(name).unwrap_or_else(|| panic!("map {name} missing"));
        assert_eq!((m.key_size(), m.value_size()), (k, v), "key/value size of map {name}");
    }
    assert!(
        obj.maps[abi::MAP_WAKEUPS].max_entries().is_power_of_two(),
        "ring buffer size must be a power of two"
    );
    // The reader maps the event rings into its memory.
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    for name in [abi::MAP_CPU_EVENTS, abi::MAP_CPU_POS] {
        assert_ne!(
            obj.maps[name].map_flags() & BPF_F_MMAPABLE,
            0,
            "map {name} must be mmapable"
        );
    }
    assert!(obj.has_btf_relocations(), "the program must be CO-RE (BTF relocations)");
}

#[test]
fn program_and_globals_exist_with_the_sizes_the_loader_writes() {
    let obj = object::File::parse(snat_ebpf::object()).unwrap();
    let section = format!("tracepoint/{}/{}", abi::TP_CATEGORY, abi::TP_NAME);
    assert!(obj.section_by_name(&section).is_some(), "section {section}");
    let raw = format!("raw_tracepoint/{}", abi::TP_NAME);
    assert!(obj.section_by_name(&raw).is_some(), "section {raw}");
    let syms: HashMap<String, u64> = obj
        .symbols()
        .filter_map(|s| Some((s.name().ok()?.to_string(), s.size())))
        .collect();
    assert!(syms.contains_key(abi::PROGRAM), "program symbol {}", abi::PROGRAM);
    for program in [abi::PROGRAM_RAW, abi::PROGRAM_CAST] {
        assert!(syms.contains_key(program), "program symbol {program}");
    }
    for (name, size) in [
        (abi::CFG_EMIT_EVENTS, 1),
        (abi::CFG_FILTER_NETNS, 1),
        (abi::CFG_FAMILY, 2),
        (abi::CFG_PORT, 2),
        (abi::CFG_PID, 4),
        (abi::CFG_RING_SHIFT, 4),
        (abi::CFG_WAKEUP_EVENTS, 4),
        (abi::CFG_SOCKS_MASK, 4),
        (abi::CFG_TSO, 1),
        (abi::CFG_FLOW_MAX_ID, 4),
    ] {
        assert_eq!(syms.get(name).copied(), Some(size), "global {name}");
    }
    // No path of the build machine leaks into the object.
    let bytes = snat_ebpf::object();
    // The needles are this checkout's directory and the builder's home, found at run time.
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.display().to_string());
    let home = std::env::var("HOME").ok().filter(|h| h.len() > 1);
    for needle in workspace.into_iter().chain(home).chain([String::from("/home/")]) {
        let needle = needle.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "object contains {:?}",
            String::from_utf8_lossy(needle)
        );
    }
}
