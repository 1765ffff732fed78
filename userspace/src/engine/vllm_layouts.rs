//! TEMPORARY hand-written 0.32 layout (to be replaced by the generated table).
pub struct VllmLayout {
    pub first: (u16, u16, u16),
    pub last: (u16, u16, u16),
    pub outputs: OutputsLayout,
    pub output: OutputLayout,
    pub request: RequestLayout,
    pub finish_reasons: &'static [&'static str],
    pub event_types: EventTypes,
    pub request_types: RequestTypes,
}
pub struct OutputsLayout {
    pub len: usize,
    pub engine_index: Option<usize>,
    pub outputs: usize,
    pub scheduler_stats: Option<usize>,
    pub timestamp: Option<usize>,
    pub utility_output: Option<usize>,
    pub finished_requests: Option<usize>,
}
pub struct OutputLayout {
    pub len: usize,
    pub request_id: usize,
    pub new_token_ids: usize,
    pub finish_reason: Option<usize>,
    pub stop_reason: Option<usize>,
    pub events: Option<usize>,
    pub num_cached_tokens: Option<usize>,
    pub prefill_stats: Option<usize>,
}
pub struct RequestLayout {
    pub len: usize,
    pub request_id: usize,
    pub prompt_token_ids: Option<usize>,
    pub sampling_params: Option<usize>,
    pub arrival_time: Option<usize>,
    pub data_parallel_rank: Option<usize>,
    pub external_req_id: Option<usize>,
    pub client_index: Option<usize>,
}
pub struct EventTypes {
    pub queued: i64,
    pub scheduled: i64,
    pub preempted: i64,
}
pub struct RequestTypes {
    pub add: u8,
    pub abort: u8,
    pub start_dp_wave: Option<u8>,
    pub utility: Option<u8>,
}
pub struct StableLayout {
    pub request_id: Option<usize>,
    pub prompt_token_ids: Option<usize>,
    pub outputs: Option<usize>,
    pub engine_index: Option<usize>,
    pub request_id_out: Option<usize>,
    pub new_token_ids: Option<usize>,
}
pub static LAYOUTS: &[VllmLayout] = &[VllmLayout {
    first: (0, 32, 0),
    last: (0, 32, 0),
    outputs: OutputsLayout {
        len: 9,
        engine_index: Some(0),
        outputs: 1,
        scheduler_stats: Some(2),
        timestamp: Some(3),
        utility_output: Some(4),
        finished_requests: Some(5),
    },
    output: OutputLayout {
        len: 18,
        request_id: 0,
        new_token_ids: 1,
        finish_reason: Some(5),
        stop_reason: Some(6),
        events: Some(7),
        num_cached_tokens: None,
        prefill_stats: Some(11),
    },
    request: RequestLayout {
        len: 22,
        request_id: 0,
        prompt_token_ids: Some(1),
        sampling_params: Some(3),
        arrival_time: Some(5),
        data_parallel_rank: Some(8),
        external_req_id: Some(16),
        client_index: Some(11),
    },
    finish_reasons: &["stop", "length", "abort", "error", "repetition"],
    event_types: EventTypes { queued: 1, scheduled: 2, preempted: 3 },
    request_types: RequestTypes { add: 0, abort: 1, start_dp_wave: Some(2), utility: Some(3) },
}];
pub fn for_version(v: (u16, u16, u16)) -> Option<&'static VllmLayout> {
    LAYOUTS.iter().find(|l| l.first <= v && v <= l.last)
}
pub fn stable() -> StableLayout {
    StableLayout {
        request_id: Some(0),
        prompt_token_ids: Some(1),
        outputs: Some(1),
        engine_index: Some(0),
        request_id_out: Some(0),
        new_token_ids: Some(1),
    }
}
