//! The image catalog: kernels, initrds and root filesystems a VM may boot, as files in one
//! directory (`VM_BASE_PATH/images`).
//!
//! A request names an image by [`ImageName`], which already cannot hold `/` or `..`. The
//! catalog still resolves the name on disk and refuses anything whose real path leaves the
//! directory (a symlink pointing out) or is not a regular file.

use std::io;
use std::path::{Path, PathBuf};

use vmfleet_core::ImageName;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the image catalog {} cannot be opened", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {0} is not in the catalog")]
    NotFound(ImageName),
    #[error("image {0} resolves outside the catalog")]
    Escapes(ImageName),
    #[error("image {0} is not a regular file")]
    NotAFile(ImageName),
    #[error("image {0} is already in the catalog")]
    Exists(ImageName),
    #[error("image {name} cannot be read")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One image of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogImage {
    pub name: ImageName,
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ImageCatalog {
    root: PathBuf,
}

impl ImageCatalog {
    /// Opens the catalog at `root`, creating the directory when it does not exist.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let root = root.as_ref();
        let open_err = |source| CatalogError::Open {
            path: root.to_owned(),
            source,
        };
        std::fs::create_dir_all(root).map_err(open_err)?;
        let root = root.canonicalize().map_err(open_err)?;
        Ok(ImageCatalog { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of image `name`, checked to be a regular file inside the catalog.
    pub fn resolve(&self, name: &ImageName) -> Result<PathBuf, CatalogError> {
        let real = match self.root.join(name.as_str()).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CatalogError::NotFound(name.clone()));
            }
            Err(source) => {
                return Err(CatalogError::Io {
                    name: name.to_string(),
                    source,
                });
            }
        };
        if real.parent() != Some(self.root.as_path()) {
            return Err(CatalogError::Escapes(name.clone()));
        }
        let meta = std::fs::metadata(&real).map_err(|source| CatalogError::Io {
            name: name.to_string(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CatalogError::NotAFile(name.clone()));
        }
        Ok(real)
    }

    /// Adds a copy of `from` to the catalog as `name`; an image never replaces another.
    /// Written beside and renamed, so a reader never sees half an image.
    pub fn import(&self, name: &ImageName, from: &Path) -> Result<PathBuf, CatalogError> {
        let dest = self.root.join(name.as_str());
        let io_err = |source| CatalogError::Io {
            name: name.to_string(),
            source,
        };
        let tmp = self.root.join(format!(".{}.importing", name.as_str()));
        std::fs::copy(from, &tmp).map_err(io_err)?;
        // A hard link fails if the name is taken: no image is ever overwritten.
        let linked = std::fs::hard_link(&tmp, &dest);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(CatalogError::Exists(name.clone()))
            }
            Err(source) => Err(io_err(source)),
        }
    }

    /// The images a request may name: regular files inside the catalog with valid names.
    pub fn list(&self) -> Result<Vec<CatalogImage>, CatalogError> {
        let io_err = |source| CatalogError::Io {
            name: self.root.display().to_string(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| ImageName::new(n).ok())
            else {
                continue;
            };
            if let Ok(path) = self.resolve(&name) {
                let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                out.push(CatalogImage { name, size_bytes });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn name(s: &str) -> ImageName {
        ImageName::new(s).unwrap()
    }

    #[test]
    fn resolves_inside_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, "secret").unwrap();
        let cat = ImageCatalog::open(dir.path().join("images")).unwrap();
        std::fs::write(cat.root().join("vmlinux.bin"), "kernel").unwrap();
        std::fs::create_dir(cat.root().join("subdir")).unwrap();
        symlink(&secret, cat.root().join("evil.img")).unwrap();
        symlink(cat.root().join("vmlinux.bin"), cat.root().join("alias.bin")).unwrap();

        assert_eq!(
            cat.resolve(&name("vmlinux.bin")).unwrap(),
            cat.root().join("vmlinux.bin")
        );
        // A link that stays inside is the file it points to.
        assert!(cat.resolve(&name("alias.bin")).is_ok());
        assert!(matches!(
            cat.resolve(&name("evil.img")),
            Err(CatalogError::Escapes(_))
        ));
        assert!(matches!(
            cat.resolve(&name("subdir")),
            Err(CatalogError::NotAFile(_))
        ));
        assert!(matches!(
            cat.resolve(&name("missing.ext4")),
            Err(CatalogError::NotFound(_))
        ));
        let names: Vec<String> = cat
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.name.to_string())
            .collect();
        assert_eq!(names, ["alias.bin", "vmlinux.bin"]);
    }
}
