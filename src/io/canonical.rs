//! safetensors bytes that depend on the contents only: the library writes its metadata from a
//! `HashMap`, whose order changes from process to process, so two identical runs would write
//! different files (and different hashes in a run's manifest). Here the metadata goes in sorted
//! by key; tensors are already in a fixed order (dtype, then name).

use safetensors::tensor::{SafeTensorError, View};
use std::collections::BTreeMap;

/// `safetensors::serialize` with the metadata's keys in sorted order.
pub fn serialize_sorted<S, V, I>(
    data: I,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, SafeTensorError>
where
    S: AsRef<str> + Ord + std::fmt::Display,
    V: View,
    I: IntoIterator<Item = (S, V)>,
{
    // Serialise without metadata (a header that is only the tensors' table), then put the
    // metadata first in the header as the library would, padding to 8 bytes again. Offsets
    // count from the end of the header, so the data needs no change.
    let plain = safetensors::serialize(data, None)?;
    let n = u64::from_le_bytes(plain[..8].try_into().expect("8-byte header length")) as usize;
    let table = std::str::from_utf8(&plain[8..8 + n])
        .expect("safetensors writes a UTF-8 header")
        .trim_end_matches(' ');
    let body = table
        .strip_prefix('{')
        .expect("the header is a JSON object");
    let mut header = String::from("{\"__metadata__\":");
    header.push_str(&serde_json::to_string(metadata).expect("strings serialise"));
    if body != "}" {
        header.push(',');
    }
    header.push_str(body);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + plain.len() - 8 - n);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&plain[8 + n..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};
    use safetensors::SafeTensors;

    #[test]
    fn same_contents_same_bytes_and_readable() {
        let data: Vec<u8> = (0..24).collect();
        let views = || {
            vec![
                (
                    "b",
                    TensorView::new(Dtype::F32, vec![2, 2], &data[..16]).unwrap(),
                ),
                (
                    "a",
                    TensorView::new(Dtype::U8, vec![8], &data[16..]).unwrap(),
                ),
            ]
        };
        let meta: BTreeMap<String, String> = (0..20)
            .map(|i| (format!("key{i}"), format!("value \"{i}\"")))
            .collect();
        let one = serialize_sorted(views(), &meta).unwrap();
        assert_eq!(one, serialize_sorted(views(), &meta).unwrap());
        let st = SafeTensors::deserialize(&one).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &data[..16]);
        assert_eq!(st.tensor("a").unwrap().data(), &data[16..]);
        let (_, header) = SafeTensors::read_metadata(&one).unwrap();
        let back = header.metadata().clone().unwrap();
        assert_eq!(back.len(), 20);
        assert_eq!(back["key3"], "value \"3\"");
        // No tensors at all still makes a valid file.
        let empty: Vec<(&str, TensorView)> = Vec::new();
        let bytes = serialize_sorted(empty, &meta).unwrap();
        assert!(SafeTensors::deserialize(&bytes).unwrap().is_empty());
    }
}
