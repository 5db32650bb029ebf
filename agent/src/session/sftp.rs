//! The `sftp` subsystem (russh-sftp's protocol, files through tokio::fs): enough of SFTP v3 for
//! OpenSSH's `sftp` and `scp` (which speaks SFTP since OpenSSH 9) and IDE file browsers. Relative
//! paths are from the user's home, as with OpenSSH's sftp-server.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Longest read answered at once (clients ask for 32–256 KiB).
const MAX_READ: u32 = 256 * 1024;

enum Open {
    File(tokio::fs::File),
    /// A directory: its entries, handed out by the first `readdir`.
    Dir(Option<PathBuf>),
}

/// One SFTP session.
pub struct Sftp {
    home: PathBuf,
    handles: HashMap<String, Open>,
    next: u64,
}

impl Sftp {
    /// A session rooted (for relative paths) at `home`.
    pub fn new(home: PathBuf) -> Sftp {
        Sftp {
            home,
            handles: HashMap::new(),
            next: 0,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        resolve(&self.home, p)
    }

    fn add(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    fn file(&mut self, handle: &str) -> Result<&mut tokio::fs::File, StatusCode> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusCode::Failure),
        }
    }
}

/// `p` against `home` (absolute paths as they are), `.` and `..` folded lexically.
pub fn resolve(home: &Path, p: &str) -> PathBuf {
    let joined = if p.starts_with('/') {
        PathBuf::from(p)
    } else {
        home.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn status(e: std::io::Error) -> StatusCode {
    match e.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

async fn apply_attrs(path: &Path, attrs: &FileAttributes) -> Result<(), StatusCode> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(mode) = attrs.permissions {
        let perms = std::fs::Permissions::from_mode(mode & 0o7777);
        tokio::fs::set_permissions(path, perms)
            .await
            .map_err(status)?;
    }
    if let Some(size) = attrs.size {
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .map_err(status)?;
        f.set_len(size).await.map_err(status)?;
    }
    Ok(())
}

impl russh_sftp::server::Handler for Sftp {
    type Error = StatusCode;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename);
        let mut options: tokio::fs::OpenOptions = std::fs::OpenOptions::from(pflags).into();
        if let Some(mode) = attrs.permissions {
            options.mode(mode & 0o7777);
        }
        let f = options.open(&path).await.map_err(status)?;
        Ok(Handle {
            id,
            handle: self.add(Open::File(f)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(Open::File(mut f)) => {
                f.flush().await.map_err(status)?;
                Ok(ok(id))
            }
            Some(Open::Dir(_)) => Ok(ok(id)),
            None => Err(StatusCode::Failure),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = self.file(&handle)?;
        f.seek(SeekFrom::Start(offset)).await.map_err(status)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let mut filled = 0;
        while filled < data.len() {
            let n = f.read(&mut data[filled..]).await.map_err(status)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Err(StatusCode::Eof);
        }
        data.truncate(filled);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        f.seek(SeekFrom::Start(offset)).await.map_err(status)?;
        f.write_all(&data).await.map_err(status)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = tokio::fs::symlink_metadata(self.path(&path))
            .await
            .map_err(status)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = tokio::fs::metadata(self.path(&path))
            .await
            .map_err(status)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let m = self.file(&handle)?.metadata().await.map_err(status)?;
        Ok(Attrs {
            id,
            attrs: FileAttributes::from(&m),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply_attrs(&self.path(&path), &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        use std::os::unix::fs::PermissionsExt;
        let f = self.file(&handle)?;
        if let Some(mode) = attrs.permissions {
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                .await
                .map_err(status)?;
        }
        if let Some(size) = attrs.size {
            f.set_len(size).await.map_err(status)?;
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path);
        let m = tokio::fs::metadata(&path).await.map_err(status)?;
        if !m.is_dir() {
            return Err(StatusCode::NoSuchFile);
        }
        Ok(Handle {
            id,
            handle: self.add(Open::Dir(Some(path))),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let dir = match self.handles.get_mut(&handle) {
            Some(Open::Dir(d)) => d.take(),
            _ => return Err(StatusCode::Failure),
        };
        let Some(dir) = dir else {
            return Err(StatusCode::Eof);
        };
        let mut files = vec![];
        let mut rd = tokio::fs::read_dir(&dir).await.map_err(status)?;
        while let Some(entry) = rd.next_entry().await.map_err(status)? {
            let Ok(m) = tokio::fs::symlink_metadata(entry.path()).await else {
                continue;
            };
            files.push(File::new(
                entry.file_name().to_string_lossy(),
                FileAttributes::from(&m),
            ));
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        tokio::fs::remove_file(self.path(&filename))
            .await
            .map_err(status)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        tokio::fs::create_dir(&path).await.map_err(status)?;
        if attrs.permissions.is_some() {
            apply_attrs(&path, &attrs).await?;
        }
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        tokio::fs::remove_dir(self.path(&path))
            .await
            .map_err(status)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = self.path(&path);
        let p = tokio::fs::canonicalize(&p).await.unwrap_or(p);
        Ok(Name {
            id,
            files: vec![File::dummy(p.to_string_lossy())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        tokio::fs::rename(self.path(&oldpath), self.path(&newpath))
            .await
            .map_err(status)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = tokio::fs::read_link(self.path(&path))
            .await
            .map_err(status)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        tokio::fs::symlink(targetpath, self.path(&linkpath))
            .await
            .map_err(status)?;
        Ok(ok(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_from_home() {
        let home = Path::new("/home/coder");
        for (p, want) in [
            (".", "/home/coder"),
            ("", "/home/coder"),
            ("src/a.rs", "/home/coder/src/a.rs"),
            ("../other", "/home/other"),
            ("/etc/hosts", "/etc/hosts"),
            ("/../../x", "/x"),
        ] {
            assert_eq!(resolve(home, p), PathBuf::from(want), "{p}");
        }
    }
}
