//! Draining the datapath's flow events (`pal_flow_v1`) into the hub.
//!
//! The datapath wakes this task only once `FLOW_RING_WAKE_BYTES` are pending (a wake-up per
//! record costs the packet's CPU an interrupt, see `palisade_common::events`), so the task
//! drains the ring when its fd becomes readable *and* every `FLOW_DRAIN_INTERVAL_MS`: an event
//! waits at most that long. Each round takes at most `BATCH` records (so naming never starves
//! the agent's other tasks on its single-threaded runtime) and names them with the `Names` of
//! the latest apply. The datapath never waits for this task: when it falls behind, the kernel
//! drops new records and the programs count them (`pal_evstat_v1`, metric
//! `palisade_flow_events_lost_total`).

use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use palisade_common::events::{FLOW_DRAIN_INTERVAL_MS, FlowEvent};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::MissedTickBehavior;

use super::Hub;
use super::names::wall_offset_ns;

/// Records named per round at most.
const BATCH: usize = 512;

/// Runs until the ring buffer's fd fails (never, in practice).
pub async fn run(rb: RingBuf<MapData>, hub: Arc<Hub>) {
    // SAFETY: the ring buffer owns its map fd, and the `AsyncFd` owns the ring buffer: the fd
    // stays open and the same until both are dropped together.
    let registered = unsafe { AsyncFd::register_with_interest(rb, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("flow events: polling the ring buffer: {e}");
            return;
        }
    };
    let mut drain_tick = tokio::time::interval(Duration::from_millis(FLOW_DRAIN_INTERVAL_MS));
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                // Cleared before draining: a record submitted (with a wake-up) meanwhile
                // makes the fd readable again.
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!("flow events: waiting on the ring buffer: {e}");
                    return;
                }
            },
            _ = drain_tick.tick() => {}
        }
        loop {
            let events = take_batch(fd.get_mut(), &hub);
            let full = events.len() == BATCH;
            if !events.is_empty() {
                let names = hub.names();
                hub.push(names.resolve(&events, wall_offset_ns()));
            }
            if !full {
                break;
            }
            // Let the agent's other tasks run before the next batch.
            tokio::task::yield_now().await;
        }
    }
}

/// Up to `BATCH` records from the ring buffer (fewer: it is drained).
fn take_batch(rb: &mut RingBuf<MapData>, hub: &Hub) -> Vec<FlowEvent> {
    let mut events = Vec::with_capacity(BATCH);
    while events.len() < BATCH {
        let Some(item) = rb.next() else { break };
        if item.len() == std::mem::size_of::<FlowEvent>() {
            // SAFETY: a `FlowEvent`-sized record written by the datapath; every bit pattern
            // is a valid `FlowEvent` (plain integers).
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        } else {
            hub.metrics.count_malformed_event();
        }
    }
    events
}
