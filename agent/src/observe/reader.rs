//! Draining the datapath's flow events (`pal_flow_v1`) into the hub.
//!
//! The ring buffer's fd becomes readable when records are submitted; the task drains what is
//! there (at most `BATCH` per wake-up, so naming never starves the agent's other tasks on its
//! single-threaded runtime) and names each batch with the `Names` of the latest apply. The
//! datapath never waits for this task: when it falls behind, the kernel drops new records and
//! the programs count them (`pal_evstat_v1`, metric `palisade_flow_events_lost_total`).

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use palisade_common::events::FlowEvent;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::Hub;
use super::names::wall_offset_ns;

/// Records named per wake-up at most.
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
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!("flow events: waiting on the ring buffer: {e}");
                return;
            }
        };
        let mut events = Vec::with_capacity(BATCH);
        let rb = guard.get_inner_mut();
        while events.len() < BATCH {
            let Some(item) = rb.next() else { break };
            if item.len() == std::mem::size_of::<FlowEvent>() {
                // SAFETY: a `FlowEvent`-sized record written by the datapath; every bit
                // pattern is a valid `FlowEvent` (plain integers).
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            } else {
                hub.metrics.count_malformed_event();
            }
        }
        let full = events.len() == BATCH;
        if !full {
            // Drained: wait for the next wake-up.
            guard.clear_ready();
        }
        drop(guard);
        if !events.is_empty() {
            let names = hub.names();
            hub.push(names.resolve(&events, wall_offset_ns()));
        }
        if full {
            // Let the agent's other tasks run before the next batch.
            tokio::task::yield_now().await;
        }
    }
}
