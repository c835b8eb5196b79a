//! Kept for code written against the old path: image names are
//! [`sysupdate::extension::ImageName`] (systemd's `image_name_is_valid()`).

#[deprecated(note = "use sysupdate::extension::ImageName")]
pub type ExtensionName = sysupdate::extension::ImageName;
