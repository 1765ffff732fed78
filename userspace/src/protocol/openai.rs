//! The OpenAI-compatible API as vLLM and SGLang serve it: what a request asks for, what each
//! streamed chunk carries, and what a whole response body says.
//!
//! Parsing is typed and borrowing (serde skips what is not needed). Bodies whose middle was not
//! captured (only head and tail bytes) are read with a key scanner instead: in JSON, an
//! unescaped `"key":` can only be a key, so the first `"model":"..."` is the model.

use std::borrow::Cow;

use serde::Deserialize;

/// The kind of API call, from the request path (`gen_ai.operation.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
    /// SGLang's native `/generate`.
    Generate,
    /// Any other path: recorded as a plain HTTP request.
    Other,
}

impl Operation {
    pub fn from_path(path: &str) -> Self {
        let path = path.split('?').next().unwrap_or(path);
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => Operation::Chat,
            "/v1/completions" | "/completions" => Operation::TextCompletion,
            "/v1/embeddings" | "/embeddings" => Operation::Embeddings,
            "/generate" => Operation::Generate,
            _ => Operation::Other,
        }
    }

    /// `gen_ai.operation.name` value.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::Generate => "generate_content",
            Operation::Other => "other",
        }
    }

    pub fn is_llm(self) -> bool {
        self != Operation::Other
    }

    /// Whether responses carry generated tokens.
    pub fn generates(self) -> bool {
        matches!(self, Operation::Chat | Operation::TextCompletion | Operation::Generate)
    }
}

/// What a request body asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestInfo {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub include_usage: Option<bool>,
    pub n: Option<u32>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Prompt text (messages' contents or prompt), only kept when content capture is on.
    pub prompt: Option<String>,
}

/// A request body as read: `P` is what the prompt fields (`messages`, `prompt`, `text`) are
/// read into: their JSON tree when content is captured, else nothing (skipped unallocated: the
/// prompt is most of a request's bytes).
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct RawRequest<'a, P> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_new_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default = "none")]
    messages: Option<P>,
    #[serde(default = "none")]
    prompt: Option<P>,
    #[serde(default = "none")]
    text: Option<P>,
    #[serde(default)]
    sampling_params: Option<SamplingParams>,
}

fn none<P>() -> Option<P> {
    None
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct SamplingParams {
    max_new_tokens: Option<u64>,
    n: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
}

fn prompt_text(messages: Option<&serde_json::Value>, prompt: Option<&serde_json::Value>) -> Option<String> {
    let mut out = String::new();
    if let Some(serde_json::Value::Array(ms)) = messages {
        for m in ms {
            let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
            match m.get("content") {
                Some(serde_json::Value::String(s)) => {
                    out.push_str(&format!("{role}: {s}\n"));
                }
                Some(serde_json::Value::Array(parts)) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                            out.push_str(&format!("{role}: {t}\n"));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    match prompt {
        Some(serde_json::Value::String(s)) => out.push_str(s),
        Some(serde_json::Value::Array(a)) => {
            for p in a {
                if let Some(s) = p.as_str() {
                    out.push_str(s);
                    out.push('\n');
                }
            }
        }
        _ => {}
    }
    (!out.is_empty()).then_some(out)
}

/// Parses a complete request body. `keep_prompt` keeps the prompt text (content capture).
pub fn parse_request(body: &[u8], keep_prompt: bool) -> Option<RequestInfo> {
    if keep_prompt {
        let r: RawRequest<'_, serde_json::Value> = serde_json::from_slice(body).ok()?;
        let prompt = prompt_text(r.messages.as_ref(), r.prompt.as_ref().or(r.text.as_ref()));
        return Some(RequestInfo { prompt, ..request_info(r) });
    }
    let r: RawRequest<'_, serde::de::IgnoredAny> = serde_json::from_slice(body).ok()?;
    Some(request_info(r))
}

/// Everything but the prompt.
fn request_info<P>(r: RawRequest<'_, P>) -> RequestInfo {
    let sp = r.sampling_params.as_ref();
    RequestInfo {
        model: r.model.map(Cow::into_owned),
        stream: r.stream,
        include_usage: r.stream_options.and_then(|s| s.include_usage),
        n: r.n.or(sp.and_then(|s| s.n)),
        max_tokens: r.max_tokens.or(r.max_completion_tokens).or(r.max_new_tokens).or(sp.and_then(|s| s.max_new_tokens)),
        temperature: r.temperature.or(sp.and_then(|s| s.temperature)),
        top_p: r.top_p.or(sp.and_then(|s| s.top_p)),
        prompt: None,
    }
}

/// Reads what it can from body fragments (head and tail captured, middle lost).
pub fn scan_request(fragments: &[&[u8]]) -> RequestInfo {
    let mut info = RequestInfo::default();
    for f in fragments {
        if info.model.is_none() {
            info.model = scan_string(f, "model");
        }
        if info.stream.is_none() {
            info.stream = scan_bool(f, "stream");
        }
        if info.include_usage.is_none() {
            info.include_usage = scan_bool(f, "include_usage");
        }
        if info.max_tokens.is_none() {
            info.max_tokens = scan_u64(f, "max_tokens").or_else(|| scan_u64(f, "max_completion_tokens"));
        }
        if info.n.is_none() {
            info.n = scan_u64(f, "n").and_then(|n| u32::try_from(n).ok());
        }
    }
    info
}

/// Token usage as reported by the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    pub cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    choices: Option<Vec<RawChoice<'a>>>,
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// SGLang /generate: `meta_info`.
    #[serde(default)]
    meta_info: Option<MetaInfo>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MetaInfo {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    finish_reason: Option<serde_json::Value>,
    id: Option<String>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(borrow)]
    message: Option<RawDelta<'a>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
}

/// One choice's share of a chunk or response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChoiceInfo {
    pub index: u32,
    /// The chunk carries generated output (content, reasoning, tool calls or text).
    pub has_output: bool,
    pub finish_reason: Option<String>,
    /// Generated text (content and reasoning), only kept when content capture is on.
    pub text: Option<String>,
}

/// What one streamed chunk, or one whole non-streamed response, carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResponseInfo {
    pub id: Option<String>,
    pub model: Option<String>,
    pub choices: Vec<ChoiceInfo>,
    pub usage: Option<Usage>,
    /// The server reported an error in the body (`{"error": ...}`): its type or message.
    pub error: Option<String>,
}

/// A short identifier for a body-reported error (`type`, else `code`), never free text: error
/// messages would make unbounded metric label values.
fn error_type(v: &serde_json::Value) -> String {
    let ident = |s: &String| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b))
    };
    let pick = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str().map(str::to_string).or_else(|| x.as_i64().map(|n| n.to_string())))
            .filter(ident)
    };
    pick("type").or_else(|| pick("code")).unwrap_or_else(|| "error".to_string())
}

fn nonempty(s: &Option<Cow<'_, str>>) -> bool {
    s.as_ref().is_some_and(|s| !s.is_empty())
}

/// Parses a streamed chunk's JSON or a whole response body. `keep_text` keeps generated text.
pub fn parse_response(body: &[u8], keep_text: bool) -> Option<ResponseInfo> {
    parse_chunk(body, keep_text, true)
}

/// [`parse_response`] for a stream's chunks: `ids` false leaves `id` and `model` out (a
/// stream keeps its first chunk's; copying them out of every chunk is most of a chunk's
/// allocations).
pub fn parse_chunk(body: &[u8], keep_text: bool, ids: bool) -> Option<ResponseInfo> {
    if !keep_text
        && !ids
        && let Some(info) = simple_chunk(body)
    {
        return Some(info);
    }
    let r: RawChunk<'_> = serde_json::from_slice(body).ok()?;
    let mut info = ResponseInfo {
        id: r.id.filter(|_| ids).map(Cow::into_owned),
        model: r.model.filter(|_| ids).map(Cow::into_owned),
        usage: r.usage,
        error: r.error.as_ref().map(error_type),
        choices: Vec::new(),
    };
    for (i, c) in r.choices.unwrap_or_default().into_iter().enumerate() {
        let d = c.delta.as_ref().or(c.message.as_ref());
        let tools = d.and_then(|d| d.tool_calls.as_ref()).is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
        let has_output = nonempty(&c.text)
            || tools
            || d.is_some_and(|d| nonempty(&d.content) || nonempty(&d.reasoning_content) || nonempty(&d.reasoning));
        let text = if keep_text {
            let mut s = String::new();
            if let Some(d) = d {
                for part in [&d.reasoning_content, &d.reasoning, &d.content].into_iter().flatten() {
                    s.push_str(part);
                }
            }
            if let Some(t) = &c.text {
                s.push_str(t);
            }
            (!s.is_empty()).then_some(s)
        } else {
            None
        };
        info.choices.push(ChoiceInfo {
            index: c.index.unwrap_or(i as u32),
            has_output,
            finish_reason: c.finish_reason.map(Cow::into_owned),
            text,
        });
    }
    // SGLang's native /generate.
    if let Some(m) = r.meta_info {
        if info.usage.is_none() {
            info.usage = Some(Usage {
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
                prompt_tokens_details: None,
            });
        }
        if info.id.is_none() {
            info.id = m.id;
        }
        let finish = m
            .finish_reason
            .as_ref()
            .and_then(|f| f.get("type").and_then(|t| t.as_str()).or(f.as_str()).map(str::to_string));
        if info.choices.is_empty() {
            info.choices.push(ChoiceInfo {
                index: 0,
                has_output: nonempty(&r.text),
                finish_reason: finish,
                text: if keep_text { r.text.map(Cow::into_owned) } else { None },
            });
        }
    }
    Some(info)
}

/// The common streamed chunk, one choice's delta or text and its finish reason, read in one
/// pass without a JSON parser (parsing every chunk was a third of the daemon's CPU under load):
/// what [`parse_chunk`] gives for it, with neither text nor ids. None for anything else (usage,
/// errors, tool calls, logprobs, several choices, escaped characters, SGLang's `meta_info`, a
/// body that is not an object): those are parsed. Without escapes, a quote always opens or
/// closes a string, so a string followed by a colon is a key, and brackets outside strings give
/// its depth: top-level keys at 1, a choice's at 3, its delta's at 4.
fn simple_chunk(body: &[u8]) -> Option<ResponseInfo> {
    /// A string value's bytes, or None for null; Err (None outside) for anything else.
    fn string(v: &[u8]) -> Option<Option<&[u8]>> {
        if v.starts_with(b"null") {
            return Some(None);
        }
        let v = v.strip_prefix(b"\"")?;
        Some(Some(&v[..memchr::memchr(b'"', v)?]))
    }
    let b = body.trim_ascii();
    if b.first() != Some(&b'{') || b.last() != Some(&b'}') {
        return None;
    }
    let (mut depth, mut i) = (0u32, 0usize);
    let (mut index, mut finish_reason, mut has_output) = (None::<u32>, None::<String>, false);
    let (mut choices, mut delta, mut finish_seen, mut outputs_seen) = (false, false, false, 0u32);
    while i < b.len() {
        match b[i] {
            b'\\' => return None,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b'"' => {
                let start = i + 1;
                let end = start + memchr::memchr(b'"', &b[start..])?;
                i = end + 1;
                let rest = b[i..].trim_ascii_start();
                let Some(value) = rest.strip_prefix(b":") else { continue };
                let value = value.trim_ascii_start();
                let nested = value.first().is_some_and(|c| *c == b'{' || *c == b'[');
                match (depth, &b[start..end]) {
                    (_, b"usage" | b"error" | b"tool_calls" | b"meta_info" | b"message") => return None,
                    (1, b"choices") => {
                        if choices || !value.starts_with(b"[{") {
                            return None;
                        }
                        choices = true;
                    }
                    (3, b"index") if index.is_none() => {
                        let n = value.iter().take_while(|c| c.is_ascii_digit()).count();
                        index = Some(std::str::from_utf8(&value[..n]).ok()?.parse().ok()?);
                    }
                    (3, b"finish_reason") if !finish_seen => {
                        finish_seen = true;
                        finish_reason =
                            string(value)?.map(|f| std::str::from_utf8(f).map(str::to_string)).transpose().ok()?;
                    }
                    (3, b"logprobs") if value.starts_with(b"null") => {}
                    (3, b"delta") if !delta && value.starts_with(b"{") => delta = true,
                    // A choice's other members hold no object: depth 4 is the delta's.
                    (3, _) if nested => return None,
                    (3, b"text") | (4, b"content" | b"reasoning_content" | b"reasoning") => {
                        outputs_seen += 1;
                        has_output |= string(value)?.is_some_and(|t| !t.is_empty());
                    }
                    (3, b"index" | b"finish_reason" | b"logprobs" | b"delta") => return None,
                    (1..=4, _) => {}
                    _ => return None,
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // One choice (a second would repeat its keys), and a delta or a text, not both.
    let texts = if delta { 3 } else { 1 };
    if depth != 0 || !choices || outputs_seen > texts {
        return None;
    }
    Some(ResponseInfo {
        choices: vec![ChoiceInfo { index: index?, has_output, finish_reason, text: None }],
        ..Default::default()
    })
}

/// Reads what it can from response-body fragments (head and tail captured, middle lost).
pub fn scan_response(fragments: &[&[u8]]) -> ResponseInfo {
    let mut info = ResponseInfo::default();
    for f in fragments {
        if info.id.is_none() {
            info.id = scan_string(f, "id");
        }
        if info.model.is_none() {
            info.model = scan_string(f, "model");
        }
        if info.usage.is_none() {
            info.usage = scan_value::<Usage>(f, "usage");
        }
        if info.choices.is_empty()
            && let Some(fr) = scan_string(f, "finish_reason")
        {
            info.choices.push(ChoiceInfo { index: 0, has_output: true, finish_reason: Some(fr), text: None });
        }
    }
    info
}

/// Finds the first `"key":` in `b` and returns the position just after the colon and spaces.
fn find_key(b: &[u8], key: &str) -> Option<usize> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&b[from..], pat.as_bytes()) {
        let mut j = from + i + pat.len();
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b':' {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            return Some(j);
        }
        from = from + i + 1;
    }
    None
}

fn scan_value<T: serde::de::DeserializeOwned>(b: &[u8], key: &str) -> Option<T> {
    let at = find_key(b, key)?;
    let mut it = serde_json::Deserializer::from_slice(&b[at..]).into_iter::<T>();
    it.next()?.ok()
}

pub fn scan_string(b: &[u8], key: &str) -> Option<String> {
    scan_value::<String>(b, key)
}

pub fn scan_bool(b: &[u8], key: &str) -> Option<bool> {
    let at = find_key(b, key)?;
    let rest = &b[at..];
    if rest.starts_with(b"true") {
        Some(true)
    } else if rest.starts_with(b"false") {
        Some(false)
    } else {
        None
    }
}

pub fn scan_u64(b: &[u8], key: &str) -> Option<u64> {
    let at = find_key(b, key)?;
    let rest = &b[at..];
    let end = rest.iter().position(|c| !c.is_ascii_digit()).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields() {
        let r = parse_request(
            br#"{"messages":[{"role":"user","content":"hi there"}],"model":"m1","stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"n":2}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m1"));
        assert_eq!(r.stream, Some(true));
        assert_eq!(r.include_usage, Some(true));
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.n, Some(2));
        assert_eq!(r.prompt, None, "prompt text is dropped unless capture is on");
        let r = parse_request(br#"{"messages":[{"role":"user","content":"hi"}],"model":"m"}"#, true).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("user: hi\n"));
    }

    /// Without content capture the prompt is skipped unread: every other field is the same.
    #[test]
    fn request_fields_do_not_depend_on_content_capture() {
        for body in [
            &br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"model":"m","n":3,"temperature":0.5}"#[..],
            br#"{"prompt":["x","y"],"model":"m","max_completion_tokens":9,"stream":false,"top_p":0.9}"#,
            br#"{"text":"hi","sampling_params":{"max_new_tokens":4,"n":2,"temperature":0.1}}"#,
            br#"{"prompt":42,"messages":null,"model":"m"}"#,
            br#"{"model":"m","prompt":"unterminated"#,
        ] {
            let with = parse_request(body, true).map(|r| RequestInfo { prompt: None, ..r });
            assert_eq!(parse_request(body, false), with, "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(
            parse_request(br#"{"text":"hi","sampling_params":{"max_new_tokens":4}}"#, false).unwrap().max_tokens,
            Some(4)
        );
    }

    /// The parser-free reading of common chunks gives what the parser gives, or declines.
    #[test]
    fn simple_chunks_read_as_the_parser_reads_them() {
        let vllm = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" the"},"logprobs":null,"finish_reason":null}]}"#;
        let last = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"length","stop_reason":null}]}"#;
        let spaced = br#"{"id": "c", "choices": [{"index": 2, "text": "x", "logprobs": null, "finish_reason": null}]}"#;
        for b in [&vllm[..], last, spaced] {
            assert!(simple_chunk(b).is_some(), "{}", String::from_utf8_lossy(b));
            assert_eq!(
                parse_chunk(b, false, false),
                parse_response(b, false).map(|r| ResponseInfo { id: None, model: None, ..r })
            );
        }
        for declined in [
            &br#"{"choices":[{"index":0,"delta":{"content":"a\\"b"}}]}"#[..],
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            br#"{"choices":[{"index":0,"logprobs":{"content":[{"token":"a"}]},"delta":{"content":"a"}}]}"#,
            br#"{"text":"a","meta_info":{"id":"x"}}"#,
        ] {
            assert_eq!(simple_chunk(declined), None, "{}", String::from_utf8_lossy(declined));
        }
    }

    proptest::proptest! {
        /// Any chunk built from the pieces servers send: when the parser-free reading accepts
        /// it, it agrees with the parser.
        #[test]
        fn simple_chunk_agrees_with_the_parser(
            content in proptest::option::of("[ -~\u{e9}\u{4e2d}]{0,12}"),
            key in proptest::sample::select(vec!["content", "reasoning_content", "reasoning", "text"]),
            index in 0u32..4,
            finish in proptest::option::of(proptest::sample::select(vec!["stop", "length", "abort"])),
            logprobs in proptest::bool::ANY,
            sp in proptest::sample::select(vec!["", " "]),
            extra in proptest::sample::select(vec!["", r#","usage":null"#, r#","system_fingerprint":"fp""#, r#","choices2":1"#]),
            misplaced in proptest::bool::ANY,
        ) {
            let val = |s: &Option<String>| s.as_ref().map_or("null".to_string(), |s| serde_json::to_string(s).unwrap());
            let lp = if logprobs { r#"{"content":[]}"# } else { "null" };
            let fin = val(&finish.map(str::to_string));
            let out = format!(r#""{key}":{sp}{}"#, val(&content));
            // Completions put `text` in the choice, chat its keys in the delta; both also
            // appear where they do not belong.
            let (at_choice, in_delta) = if (key == "text") != misplaced { (out, String::new()) } else { (String::new(), out) };
            let sep = if at_choice.is_empty() { "" } else { "," };
            let body = format!(
                r#"{{"id":"x","model":"m"{extra},"choices":[{{"index":{sp}{index}{sep}{at_choice},"delta":{{{in_delta}}},"logprobs":{sp}{lp},"finish_reason":{sp}{fin}}}]}}"#
            );
            let slow = parse_response(body.as_bytes(), false).map(|r| ResponseInfo { id: None, model: None, ..r });
            if let Some(fast) = simple_chunk(body.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), slow, "{}", body);
            }
        }
    }

    #[test]
    fn chunk_output_detection() {
        let role = parse_response(br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#, false).unwrap();
        assert!(!role.choices[0].has_output);
        let tok = parse_response(br#"{"id":"c1","choices":[{"index":0,"delta":{"content":" ]"}}]}"#, false).unwrap();
        assert!(tok.choices[0].has_output);
        let reasoning =
            parse_response(br#"{"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}"#, false).unwrap();
        assert!(reasoning.choices[0].has_output);
        let tools = parse_response(
            br#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"name":"f"}}]}}]}"#,
            false,
        )
        .unwrap();
        assert!(tools.choices[0].has_output);
        assert_eq!(tools.choices[0].index, 1);
        let usage = parse_response(
            br#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#,
            false,
        )
        .unwrap();
        assert_eq!(usage.usage.unwrap().completion_tokens, Some(9));
        let err =
            parse_response(br#"{"error":{"message":"boom","type":"InternalServerError","code":500}}"#, false).unwrap();
        assert_eq!(err.error.as_deref(), Some("InternalServerError"));
        // Free-text errors never become label values.
        let msg = parse_response(br#"{"error":"CUDA out of memory. Tried to allocate 2.00 GiB"}"#, false).unwrap();
        assert_eq!(msg.error.as_deref(), Some("error"));
    }

    #[test]
    fn real_vllm_chunks_parse() {
        let path = crate::checkout_file("tests/data/vllm-0.32-sse.bin");
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = String::from_utf8_lossy(&raw);
        let mut outputs = 0;
        for line in text.lines() {
            if let Some(json) = line.strip_prefix("data: ")
                && json != "[DONE]"
            {
                let info = parse_response(json.as_bytes(), false).expect(json);
                assert_eq!(info.model.as_deref(), Some("tiny-llama"));
                outputs += info.choices.iter().filter(|c| c.has_output).count();
            }
        }
        assert!(outputs > 0);
    }

    #[test]
    fn scanner_reads_fragments() {
        let head = br#"{"messages":[{"role":"user","content":"say \"model\": \"x\" please ..."#;
        let tail = br#"...end"}],"model":"llama-3","stream":false,"max_tokens":12}"#;
        let r = scan_request(&[head, tail]);
        assert_eq!(r.model.as_deref(), Some("llama-3"));
        assert_eq!(r.stream, Some(false));
        assert_eq!(r.max_tokens, Some(12));
        let resp_tail = br#"...."},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"total_tokens":13,"completion_tokens":10},"x":null}"#;
        let info = scan_response(&[
            br#"{"id":"cmpl-1","object":"text_completion","model":"m","choices":[{"text":"aaa"#,
            resp_tail,
        ]);
        assert_eq!(info.id.as_deref(), Some("cmpl-1"));
        assert_eq!(info.usage.unwrap().completion_tokens, Some(10));
        assert_eq!(info.choices[0].finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn paths() {
        assert_eq!(Operation::from_path("/v1/chat/completions?x=1"), Operation::Chat);
        assert_eq!(Operation::from_path("/v1/completions"), Operation::TextCompletion);
        assert_eq!(Operation::from_path("/v1/embeddings"), Operation::Embeddings);
        assert_eq!(Operation::from_path("/health"), Operation::Other);
    }
}
