//! `aya::Pod` impls: the user side reads and writes these types in maps. All are `#[repr(C)]`
//! with explicit padding and no invalid bit patterns.
use crate::{conntrack::*, endpoint::*, events::*, fqdn::*, policy::*, stats::*};

unsafe impl aya::Pod for EndpointInfo {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for PortKey {}
unsafe impl aya::Pod for PortValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for FragValue {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for HostAddrKey {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for FlowEvent {}
unsafe impl aya::Pod for EventLimit {}
unsafe impl aya::Pod for SvcOrig {}
unsafe impl aya::Pod for NameKey {}
unsafe impl aya::Pod for FqdnEndpoint {}
unsafe impl aya::Pod for LearntKey {}
unsafe impl aya::Pod for LearntValue {}
