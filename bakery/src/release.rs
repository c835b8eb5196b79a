//! The extension-release of a recipe's images: which fields bakery
//! declares for a recipe and an architecture. The file format, the fields,
//! their order and the host compatibility check are
//! [`sysupdate::extension`]'s.

use sysupdate::extension::ExtensionRelease;
use sysupdate::Arch;

use crate::recipe::Recipe;

/// The extension-release of `recipe`'s image for `arch`.
pub fn for_recipe(recipe: &Recipe, arch: Arch) -> ExtensionRelease {
    ExtensionRelease {
        os: recipe.os.clone(),
        architecture: Some(arch),
        scope: recipe.scope.clone(),
        reload_manager: recipe.reload_manager,
        sysext_id: Some(recipe.name.clone()),
        sysext_version_id: Some(recipe.version.clone()),
        sysext_pretty_name: Some(format!("{} {}", recipe.name, recipe.version)),
    }
}
