//! Device-probe records as the kernel sends them, cut from arbitrary bytes, into the device
//! tracker with a probe of every catalogued function registered, its calls claimed by engine
//! steps in the correlation stage: it must never panic, whatever the probe ids, handles, times
//! and return values.
#![no_main]
use inferscope::{
    correlate::Correlator,
    device::{DeviceTracker, ProbeInfo, catalog},
    events::{DeviceCall, Event, decode},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut t = DeviceTracker::new();
    t.set_resolver(|_, addr| (addr % 3 == 0).then(|| format!("k{addr}")));
    for (i, e) in catalog::ENTRIES.iter().enumerate() {
        let info = ProbeInfo { pid: 1 + (i as u32 % 3), entry: e, symbol: e.symbol.into(), library: "x".into() };
        t.add_probe(i as u32, info);
    }
    let mut steps = Correlator::default();
    for pid in 1..=3 {
        steps.process_added(pid, if pid == 1 { vec![] } else { vec![1] });
    }
    let mut out = Vec::new();
    for chunk in data.chunks(72) {
        if chunk.len() >= 64 {
            let w = |i: usize| u64::from_le_bytes(chunk[i..i + 8].try_into().unwrap());
            let call = DeviceCall {
                tgid: 1 + (chunk[0] % 3) as u32,
                tid: chunk[1] as u32,
                probe: chunk[2] as u32 % (catalog::ENTRIES.len() as u32 + 2),
                start_ns: w(8),
                end_ns: (chunk[3] & 1 == 1).then(|| w(16)),
                args: [w(24), w(32), w(40), w(48)],
                ret: w(56) as i64,
            };
            t.on_call(&call, &mut out);
        }
        match decode(chunk) {
            Ok(Event::Device(c)) => t.on_call(&c, &mut out),
            Ok(Event::DeviceName { tgid, probe, handle, name }) => t.on_name(tgid, probe, handle, name),
            _ => {}
        }
        match chunk.first().copied().unwrap_or(0) % 5 {
            0 => {
                steps.device_calls(&std::mem::take(&mut out));
                let _ = steps.device_step(1, u64::from(chunk.len() as u32) << 20);
            }
            1 => t.flush_held(u64::MAX / 2, 0, &mut out),
            2 => {
                let _ = t.take_intervals();
            }
            3 => {
                let _ = t.process_gone(2, &mut out);
            }
            _ => {}
        }
    }
});
