//! OpenAI request/response extraction, typed and fragment-scanning, on arbitrary bytes.
#![no_main]
use inferscope::protocol::openai;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = openai::parse_request(data, true);
    let _ = openai::parse_response(data, true);
    // The parser-free reading of stream chunks agrees with the parser on what it accepts.
    if let Some(slow) = openai::parse_response(data, false) {
        let fast = openai::parse_chunk(data, false, false).expect("a chunk the parser reads");
        assert_eq!((&fast.choices, &fast.usage, &fast.error), (&slow.choices, &slow.usage, &slow.error));
    }
    let mid = data.len() / 2;
    let _ = openai::scan_request(&[&data[..mid], &data[mid..]]);
    let _ = openai::scan_response(&[&data[..mid], &data[mid..]]);
});
