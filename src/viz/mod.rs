//! Diagrams of the state machines (DOT, Mermaid, SVG) derived by exploring
//! the real machines, and renderings of transition traces.
