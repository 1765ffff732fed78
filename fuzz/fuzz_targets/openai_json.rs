//! OpenAI request/response extraction, typed and fragment-scanning, on arbitrary bytes.
#![no_main]
use inferscope::protocol::openai;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = openai::parse_request(data, true);
    let _ = openai::parse_response(data, true);
    let mid = data.len() / 2;
    let _ = openai::scan_request(&[&data[..mid], &data[mid..]]);
    let _ = openai::scan_response(&[&data[..mid], &data[mid..]]);
});
