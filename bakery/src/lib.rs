//! Recipes into sysext images: recipe model and lint, staging, filesystem
//! image writing, and the operations the `bakery` CLI drives.

pub mod build;
pub mod elf;
pub mod fetch;
pub mod inputs;
pub mod keygen;
pub mod lint;
pub mod lock;
pub mod publish;
pub mod recipe;
pub mod release;
pub mod seal;
pub mod source;
pub mod squashfs;
pub mod stage;
pub mod tree;
pub mod unpack;
pub mod versions;
