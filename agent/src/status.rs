//! What the agent reports (health, generations, problems naming object, field and value,
//! endpoints, datapath counters): the node contract's types, shared with `palisadectl`.

pub use palisade_node_api::status::{
    ConntrackCounts, CounterRow, EndpointRow, FlowEventCounts, Problem, Status,
};
