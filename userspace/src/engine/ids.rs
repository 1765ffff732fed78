//! Joining engine requests to the API server's: the engine's request id less what vLLM adds
//! to the API's id (a parallel-sampling prefix, a random suffix).

use super::EngineRequest;

impl EngineRequest {
    /// The id the API server answers with, for joining (the external id, or the engine id
    /// without vLLM's parallel-sampling prefix `N_` and random suffix `-xxxxxxxx`).
    pub fn join_key(&self) -> String {
        if let Some(e) = &self.external_id {
            return e.clone();
        }
        strip_engine_id(&self.request_id).to_string()
    }
}

/// `0_chatcmpl-abc` -> `chatcmpl-abc` (vLLM's parallel-sampling child prefix).
pub fn strip_sampling_prefix(id: &str) -> &str {
    if let Some((n, rest)) = id.split_once('_')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
        && rest.contains('-')
    {
        return rest;
    }
    id
}

/// `0_chatcmpl-abc-1a2b3c4d` -> `chatcmpl-abc`: the sampling prefix, and the random suffix
/// vLLM adds since 0.14. Only for engines whose ids may carry that suffix: an older release's
/// id is the API's own, which may end in `-` and 8 characters of its own (an `X-Request-Id`).
pub fn strip_engine_id(id: &str) -> &str {
    let mut s = strip_sampling_prefix(id);
    if let Some((head, tail)) = s.rsplit_once('-')
        && tail.len() == 8
        && tail.bytes().all(|b| b.is_ascii_alphanumeric())
        && head.contains('-')
    {
        s = head;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_join_the_api_id() {
        assert_eq!(strip_engine_id("chatcmpl-826e64d80e7cb10e-a9a6b96e"), "chatcmpl-826e64d80e7cb10e");
        assert_eq!(strip_engine_id("0_chatcmpl-826e64d80e7cb10e-a9a6b96e"), "chatcmpl-826e64d80e7cb10e");
        assert_eq!(strip_engine_id("chatcmpl-826e64d80e7cb10e"), "chatcmpl-826e64d80e7cb10e");
        // A bare id with no suffix is left alone, even if it has eight characters at the end.
        assert_eq!(strip_engine_id("abcdefgh-12345678"), "abcdefgh-12345678");
        assert_eq!(strip_engine_id("cmpl-1234-0"), "cmpl-1234-0");
    }
}
