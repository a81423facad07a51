//! palisade node agent.
