pub mod fixtures;
pub mod upstream;
