//! The heap as a pprof profile (profile.proto, gzipped) with Go heap
//! profiles' four sample types — `alloc_objects`, `alloc_space` (every
//! allocation since tracking began), `inuse_objects`, `inuse_space` (live
//! now; the default) — so `go tool pprof -sample_index=alloc_space` and
//! Grafana Pyroscope read it as one. The messages are the
//! subset of profile.proto this needs, declared for prost.

use std::{collections::HashMap, io::Write};

use prost::Message;

use super::{HeapStack, frame_name};

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Builds the profile: one location per (process, address), its inlined
/// functions as extra lines, innermost first.
pub fn build(stacks: &[HeapStack], time_nanos: i64) -> Profile {
    let mut p = Profile {
        string_table: vec![String::new()],
        time_nanos,
        ..Default::default()
    };
    let mut strings: HashMap<String, i64> = HashMap::from([(String::new(), 0)]);
    let mut s = |text: &str, table: &mut Vec<String>| -> i64 {
        *strings.entry(text.to_string()).or_insert_with(|| {
            table.push(text.to_string());
            table.len() as i64 - 1
        })
    };
    let mut value_type = |name: &str, unit: &str, table: &mut Vec<String>| ValueType {
        r#type: s(name, table),
        unit: s(unit, table),
    };
    let alloc_objects = value_type("alloc_objects", "count", &mut p.string_table);
    let alloc_space = value_type("alloc_space", "bytes", &mut p.string_table);
    let inuse_objects = value_type("inuse_objects", "count", &mut p.string_table);
    let inuse_space = value_type("inuse_space", "bytes", &mut p.string_table);
    p.default_sample_type = inuse_space.r#type;
    p.period_type = Some(inuse_space.clone());
    p.sample_type = vec![alloc_objects, alloc_space, inuse_objects, inuse_space];
    p.period = 1;
    let pid_key = s("pid", &mut p.string_table);

    let mut mappings: HashMap<(String, String), u64> = HashMap::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: HashMap<(u32, String), u64> = HashMap::new();
    for st in stacks {
        let mut location_ids = Vec::new();
        // Frames sharing an address are one location (inlined functions).
        for group in st.frames.chunk_by(|a, b| a.address.is_some() && a.address == b.address) {
            let addr = group[0].address.clone().unwrap_or_default();
            // Without an address, a location is known by what it names.
            let key = if addr.is_empty() {
                group.iter().map(frame_name).collect::<Vec<_>>().join(";")
            } else {
                addr.clone()
            };
            let next_id = locations.len() as u64 + 1;
            let id = *locations.entry((st.pid, key)).or_insert(next_id);
            if id == next_id {
                let module = group[0].module.clone().unwrap_or_default();
                let build_id = group[0].build_id.clone().unwrap_or_default();
                let next_map = mappings.len() as u64 + 1;
                let mapping_id = *mappings.entry((module.clone(), build_id.clone())).or_insert(next_map);
                if mapping_id == next_map {
                    p.mapping.push(Mapping {
                        id: mapping_id,
                        filename: s(&module, &mut p.string_table),
                        build_id: s(&build_id, &mut p.string_table),
                        has_functions: true,
                        has_filenames: true,
                        has_line_numbers: true,
                        has_inline_frames: true,
                    });
                }
                let mut lines = Vec::new();
                for f in group {
                    let name = frame_name(f);
                    let file = f.file.clone().unwrap_or_default();
                    let next_fn = functions.len() as u64 + 1;
                    let fid = *functions.entry((name.clone(), file.clone())).or_insert(next_fn);
                    if fid == next_fn {
                        let n = s(&name, &mut p.string_table);
                        p.function.push(Function {
                            id: fid,
                            name: n,
                            system_name: n,
                            filename: s(&file, &mut p.string_table),
                        });
                    }
                    lines.push(Line {
                        function_id: fid,
                        line: f.line.unwrap_or(0).into(),
                    });
                }
                let address = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap_or(0);
                p.location.push(Location {
                    id,
                    mapping_id,
                    address,
                    line: lines,
                });
            }
            location_ids.push(id);
        }
        p.sample.push(Sample {
            location_id: location_ids,
            value: vec![
                st.allocated_objects as i64,
                st.allocated_bytes as i64,
                st.allocations as i64,
                st.bytes as i64,
            ],
            label: vec![Label {
                key: pid_key,
                str: 0,
                num: st.pid.into(),
            }],
        });
    }
    p
}

/// The gzipped protobuf, as pprof files are.
pub fn encode(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn round_trips_with_inlined_frames_as_lines() {
        let mut stacks = super::super::collapsed::tests::stacks();
        // An inlined frame sharing leak_here's address.
        let mut inl = stacks[0].frames[0].clone();
        inl.function = Some("helper".into());
        inl.inlined = true;
        stacks[0].frames.insert(0, inl);
        stacks[0].frames[2].address = Some("0x401300".into());
        let p = build(&stacks, 123);
        let bytes = encode(&p).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut raw).unwrap();
        let back = Profile::decode(&raw[..]).unwrap();
        assert_eq!(back, p);
        let st = |i: i64| back.string_table[i as usize].as_str();
        let types: Vec<&str> = back.sample_type.iter().map(|t| st(t.r#type)).collect();
        assert_eq!(types, ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]);
        assert_eq!(st(back.default_sample_type), "inuse_space");
        assert_eq!(back.sample[0].value, vec![9, 9000, 3, 3000]);
        // helper is inlined at leak_here's address: one location, two lines.
        let names = |loc: &Location| -> Vec<&str> {
            loc.line
                .iter()
                .map(|l| st(back.function[l.function_id as usize - 1].name))
                .collect()
        };
        assert_eq!(back.sample[0].location_id, vec![1, 2]);
        assert_eq!(names(&back.location[0]), vec!["helper", "leak_here"]);
        assert_eq!(names(&back.location[1]), vec!["main"]);
        assert_eq!(back.location[1].address, 0x401300);
        assert_eq!(st(back.mapping[0].filename), "/usr/bin/leaky");
        assert!(back.sample[1].location_id.is_empty());
    }

    #[test]
    fn frames_without_addresses_are_told_apart_by_name() {
        let mut stacks = super::super::collapsed::tests::stacks();
        let mut other = stacks[0].clone();
        other.frames[0].function = Some("other_leak".into());
        stacks.push(other);
        for st in &mut stacks {
            for f in &mut st.frames {
                f.address = None;
            }
        }
        let p = build(&stacks, 0);
        // leak_here, main and other_leak: main is shared, the leaks are not.
        assert_eq!(p.location.len(), 3);
        assert_ne!(p.sample[0].location_id[0], p.sample[2].location_id[0]);
        assert_eq!(p.sample[0].location_id[1], p.sample[2].location_id[1]);
    }
}
