//! A reader for GGUF (llama.cpp's model format, version 2 and 3): header, metadata of every value
//! type, tensor table, and dequantisation of F32, F16, Q8_0, Q4_0 and Q4_1 to f32; plus the 4-bit
//! block encoders the shipped weights use (see `weights::blocks`).
//!
//! Every size and offset read from the file is checked against the bytes actually present before
//! anything is allocated or sliced, so a truncated or hostile file gives an error, never a panic.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array nesting accepted (real files use 1).
const MAX_ARRAY_DEPTH: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The tensor encodings this reader can dequantise (ggml type ids in the comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,  // 0
    F16,  // 1
    Q4_0, // 2
    Q4_1, // 3
    Q8_0, // 8
}

impl TensorType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            _ => return None,
        })
    }

    /// ggml's name of the type (`"Q4_1"`), as the shipped weight files record it.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [TensorType::F32, TensorType::F16, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0].into_iter().find(|t| t.name() == name)
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub byte_len: u64,
}

impl TensorInfo {
    pub fn num_values(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Shape in row-major order (outermost first), as Burn and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::weights("GGUF", reason.into())
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(bad(format!("truncated: needs {n} bytes at offset {}, {remaining} left", self.pos)));
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string is not valid UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(bad(format!("invalid bool byte {other}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad("arrays nested too deeply"));
                }
                let element = self.u32()?;
                let count = self.u64()?;
                // Every element takes at least one byte: an impossible count is caught before allocating.
                if count > self.remaining() {
                    return Err(bad(format!("array of {count} elements cannot fit in the {} bytes left", self.remaining())));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(element, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(bad(format!("unknown metadata value type {other}"))),
        })
    }
}

impl<'a> Gguf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4).map_err(|_| bad("file too short to be GGUF"))? != MAGIC {
            return Err(bad("not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("unsupported GGUF version {version} (2 and 3 are supported)")));
        }
        let tensor_count = c.u64()?;
        let kv_count = c.u64()?;
        // A key-value pair takes at least 12 bytes, a tensor entry at least 24.
        if kv_count > c.remaining() / 12 || tensor_count > c.remaining() / 24 {
            return Err(bad(format!("header claims {kv_count} metadata entries and {tensor_count} tensors, more than the file can hold")));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string()?;
            let kind = c.u32()?;
            let value = c.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(bad(format!("{name}: {n_dims} dimensions (1 to 4 supported)")));
            }
            let dims = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
            let type_id = c.u32()?;
            let offset = c.u64()?;
            let kind = TensorType::from_id(type_id)
                .ok_or_else(|| bad(format!("{name}: tensor type {type_id} is not supported (F32, F16, Q4_0, Q4_1, Q8_0 are)")))?;
            let values = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("{name}: size overflows")))?;
            let (per_block, block_bytes) = kind.block();
            if dims[0] % per_block != 0 {
                return Err(bad(format!("{name}: row length {} is not a multiple of the block size {per_block}", dims[0])));
            }
            let byte_len = (values / per_block).checked_mul(block_bytes).ok_or_else(|| bad(format!("{name}: size overflows")))?;
            tensors.push(TensorInfo { name, dims, kind, offset, byte_len });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| *a > 0 && a.is_power_of_two()).ok_or_else(|| bad("general.alignment must be a power of two"))?,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        if data_start > bytes.len() as u64 {
            return Err(bad("truncated before the tensor data"));
        }
        let data = &bytes[data_start as usize..];
        for t in &tensors {
            let end = t.offset.checked_add(t.byte_len).ok_or_else(|| bad(format!("{}: offset overflows", t.name)))?;
            if t.offset % alignment != 0 {
                return Err(bad(format!("{}: offset {} is not aligned to {alignment}", t.name, t.offset)));
            }
            if end > data.len() as u64 {
                return Err(bad(format!("{}: data [{}, {end}) lies beyond the end of the file (truncated?)", t.name, t.offset)));
            }
        }
        Ok(Self { version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, with an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| bad(format!("metadata {key} is missing")))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| bad(format!("tensor {name} is missing")))
    }

    /// The raw bytes of a tensor (bounds were checked when parsing).
    pub fn raw(&self, info: &TensorInfo) -> &'a [u8] {
        &self.data[info.offset as usize..(info.offset + info.byte_len) as usize]
    }

    /// The tensor as f32 values in row-major order (see [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensor(name)?;
        Ok((info.shape(), dequantize(info.kind, self.raw(info))))
    }
}

/// Dequantises whole blocks of `kind` to f32.
pub fn dequantize(kind: TensorType, raw: &[u8]) -> Vec<f32> {
    let f16 = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    match kind {
        TensorType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        TensorType::F16 => raw.chunks_exact(2).map(f16).collect(),
        TensorType::Q8_0 => raw
            .chunks_exact(34)
            .flat_map(|block| {
                let d = f16(&block[..2]);
                block[2..].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
        TensorType::Q4_0 => raw
            .chunks_exact(18)
            .flat_map(|block| {
                let d = f16(&block[..2]);
                let qs = &block[2..];
                let low = qs.iter().map(move |&q| ((q & 0x0f) as i32 - 8) as f32 * d);
                let high = qs.iter().map(move |&q| ((q >> 4) as i32 - 8) as f32 * d);
                low.chain(high)
            })
            .collect(),
        TensorType::Q4_1 => raw
            .chunks_exact(20)
            .flat_map(|block| {
                let (d, m) = (f16(&block[..2]), f16(&block[2..4]));
                let qs = &block[4..];
                let low = qs.iter().map(move |&q| (q & 0x0f) as f32 * d + m);
                let high = qs.iter().map(move |&q| (q >> 4) as f32 * d + m);
                low.chain(high)
            })
            .collect(),
    }
}

/// Quantises `values` (a whole number of 32-value blocks) into `Q4_0` or `Q4_1` blocks in
/// ggml's layout: byte `j` holds value `j` in its low nibble and value `j + 16` in its high one.
/// Values are rounded against the f16-rounded scale (and minimum) that is stored, so the
/// decoder reproduces the nearest representable value.
pub fn quantize(kind: TensorType, values: &[f32]) -> Vec<u8> {
    use burn::tensor::f16;
    assert!(values.len() % 32 == 0, "block quantisation needs whole blocks of 32 values");
    let mut out = Vec::with_capacity(values.len() / 32 * kind.block().1 as usize);
    for block in values.chunks_exact(32) {
        // (step between levels, value of level 0), as the decoder will see them.
        let (step, zero, flat_level) = match kind {
            TensorType::Q4_0 => {
                // Symmetric: the value of largest magnitude maps exactly to level 0 or 15.
                let extreme = block.iter().copied().fold(0.0f32, |a, x| if x.abs() > a.abs() { x } else { a });
                let d = f16::from_f32(extreme / -8.0);
                out.extend(d.to_bits().to_le_bytes());
                (d.to_f32(), -8.0 * d.to_f32(), 8)
            }
            TensorType::Q4_1 => {
                let (lo, hi) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let (d, m) = (f16::from_f32((hi - lo) / 15.0), f16::from_f32(lo));
                out.extend(d.to_bits().to_le_bytes());
                out.extend(m.to_bits().to_le_bytes());
                (d.to_f32(), m.to_f32(), 0)
            }
            other => panic!("quantize: {other:?} is not a 4-bit block type"),
        };
        let level = |x: f32| if step == 0.0 { flat_level } else { ((x - zero) / step).round().clamp(0.0, 15.0) as u8 };
        out.extend((0..16).map(|j| level(block[j]) | (level(block[j + 16]) << 4)));
    }
    out
}

/// IEEE 754 half → single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: renormalise.
            let shift = m.leading_zeros() - 21;
            sign | ((127 - 15 - shift + 1) << 23) | (((m << shift) & 0x3ff) << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8); // smallest subnormal
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5 (0x3800), m = -1.0 (0xbc00); byte j holds value j&15 low and 15-j high.
        let mut block = vec![0x00, 0x38, 0x00, 0xbc];
        block.extend((0..16u8).map(|j| (j & 0x0f) | ((15 - j) << 4)));
        let values = dequantize(TensorType::Q4_1, &block);
        assert_eq!(values.len(), 32);
        assert_eq!(values[0], -1.0);
        assert_eq!(values[3], 0.5); // 3 * 0.5 - 1
        assert_eq!(values[16], 6.5); // 15 * 0.5 - 1
        assert_eq!(values[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_blocks_by_hand() {
        let mut q8 = vec![0x00, 0x40]; // d = 2.0
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(TensorType::Q8_0, &q8);
        assert_eq!((v[0], v[16], v[31]), (-32.0, 0.0, 30.0));
        let mut q4 = vec![0x00, 0x3c]; // d = 1.0
        q4.extend([0x8f; 16]); // low nibble 15 → 7, high nibble 8 → 0
        let v = dequantize(TensorType::Q4_0, &q4);
        assert_eq!((v[0], v[16]), (7.0, 0.0));
    }

    #[test]
    fn four_bit_blocks_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 20.0) * 0.013).collect();
        for kind in [TensorType::Q4_0, TensorType::Q4_1] {
            let raw = quantize(kind, &values);
            assert_eq!(raw.len(), 2 * kind.block().1 as usize);
            let back = dequantize(kind, &raw);
            for (block, decoded) in values.chunks(32).zip(back.chunks(32)) {
                let (lo, hi) = block.iter().fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
                let step = match kind {
                    TensorType::Q4_0 => lo.abs().max(hi.abs()) / 8.0,
                    _ => (hi - lo) / 15.0,
                };
                for (x, y) in block.iter().zip(decoded) {
                    assert!((x - y).abs() <= step * 0.5 + 1e-3 * step.max(1e-6), "{kind:?}: {x} decoded as {y} (step {step})");
                }
            }
        }
        // A constant block decodes exactly.
        assert_eq!(dequantize(TensorType::Q4_1, &quantize(TensorType::Q4_1, &[0.25; 32])), vec![0.25; 32]);
        assert_eq!(dequantize(TensorType::Q4_0, &quantize(TensorType::Q4_0, &[0.0; 32])), vec![0.0; 32]);
    }

    fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kvs.to_le_bytes());
        b
    }

    fn gguf_string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    #[test]
    fn small_file_round_trip() {
        let mut b = header(3, 1, 2);
        b.extend(gguf_string("general.name"));
        b.extend(8u32.to_le_bytes());
        b.extend(gguf_string("tiny"));
        b.extend(gguf_string("list"));
        b.extend(9u32.to_le_bytes());
        b.extend(5u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend((-3i32).to_le_bytes());
        b.extend(4i32.to_le_bytes());
        b.extend(gguf_string("w"));
        b.extend(2u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            b.extend(v.to_le_bytes());
        }
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(g.get("general.name").unwrap().as_str(), Some("tiny"));
        assert_eq!(g.get("list").unwrap(), &Value::Array(vec![Value::I32(-3), Value::I32(4)]));
        let (shape, values) = g.dequantize("w").unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Every truncation is an error, never a panic.
        for cut in 0..b.len() {
            assert!(Gguf::parse(&b[..cut]).is_err(), "cut at {cut} parsed");
        }
    }

    #[test]
    fn hostile_headers_are_refused_before_allocating() {
        assert!(Gguf::parse(b"GGML\x03\0\0\0").unwrap_err().to_string().contains("magic"));
        assert!(Gguf::parse(&header(7, 0, 0)).unwrap_err().to_string().contains("version 7"));
        assert!(Gguf::parse(&header(3, u64::MAX, 0)).unwrap_err().to_string().contains("more than the file can hold"));
        let mut b = header(3, 0, 1);
        b.extend(gguf_string("k"));
        b.extend(9u32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        assert!(Gguf::parse(&b).unwrap_err().to_string().contains("cannot fit"));
    }
}
