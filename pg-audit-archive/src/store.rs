//! Where archived files go: a local directory or an S3 bucket and prefix, and the URL each file
//! is recorded under in the catalogue (so readers open it without being told where).

use std::sync::Arc;

use std::ops::Range;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, TryFutureExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, MetadataSuffixFetch};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::Error;

/// An archive location.
#[derive(Debug, Clone)]
pub struct Archive {
    pub(crate) store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The location as a URL, without a trailing slash: `s3://bucket/prefix`, `file:///dir`.
    base: String,
}

impl Archive {
    /// Opens `location`: `s3://bucket[/prefix]` (settings from the environment, see the crate
    /// docs), `file:///absolute/dir`, or a directory path (made if missing).
    pub fn open(location: &str) -> Result<Self, Error> {
        let location = location.trim();
        if location.is_empty() {
            return Err(Error::Location(
                "no archive location: give a directory or s3://bucket/prefix".into(),
            ));
        }
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Location(format!(
                    "no bucket in {location}: write s3://bucket/prefix"
                )));
            }
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default();
            let allow_http = std::env::var("AWS_ALLOW_HTTP").unwrap_or_default();
            if endpoint.starts_with("http://") && allow_http != "true" {
                return Err(Error::Location(format!(
                    "the S3 endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to use it, or give an https:// endpoint"
                )));
            }
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Store(format!("cannot use {location}"), e))?;
            let prefix = Path::parse(prefix.trim_matches('/'))
                .map_err(|e| Error::Location(format!("bad prefix in {location}: {e}")))?;
            let base = if prefix.as_ref().is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{prefix}")
            };
            return Ok(Archive {
                store: Arc::new(store),
                prefix,
                base,
            });
        }
        if let Some((scheme, _)) = location.split_once("://")
            && scheme != "file"
        {
            return Err(Error::Location(format!(
                "cannot archive to {location}: pg-audit writes to a directory or to s3://bucket/prefix (S3 and compatible servers)"
            )));
        }
        let dir = match location.strip_prefix("file://") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::path::PathBuf::from(location),
        };
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::Location(format!(
                "cannot make the archive directory {}: {e}",
                dir.display()
            ))
        })?;
        let dir = dir.canonicalize().map_err(|e| {
            Error::Location(format!(
                "cannot open the archive directory {}: {e}",
                dir.display()
            ))
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| Error::Store(format!("cannot use {}", dir.display()), e))?;
        let base = url::Url::from_directory_path(&dir)
            .map_err(|()| Error::Location(format!("{} is not an absolute path", dir.display())))?
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        Ok(Archive {
            store: Arc::new(store),
            prefix: Path::default(),
            base,
        })
    }

    /// Opens the archive holding the file recorded as `url`, and the file's path in it.
    pub fn open_file(url: &str) -> Result<(Self, Path), Error> {
        let (dir, name) = split_url(url)?;
        if url.starts_with("file://") {
            // Only a regular file is read: a FIFO would hang the reader, a symbolic link or a
            // device point at what the archive never wrote.
            let real = std::path::Path::new(&dir).join(&name);
            if let Ok(meta) = std::fs::symlink_metadata(&real)
                && !meta.file_type().is_file()
            {
                return Err(Error::Location(format!(
                    "{url} is not a regular file (a link, a FIFO or a device): not read"
                )));
            }
        }
        let archive = Archive::open(&dir)?;
        let part = PathPart::parse(&name)
            .map_err(|e| Error::Location(format!("not an archived file's URL: {url}: {e}")))?;
        let path = archive.prefix.parts().chain([part]).collect();
        Ok((archive, path))
    }

    /// The path of file `name` in the store (the store encodes what it cannot hold in a name).
    pub(crate) fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// The URL file `name` is recorded under: the object's real name, as the store holds it
    /// (for a directory, a `file://` URL of the file on disk).
    pub(crate) fn url(&self, name: &str) -> String {
        let path = self.path(name);
        let stored = path.filename().unwrap_or_default();
        match url::Url::parse(&format!("{}/", self.base)) {
            Ok(mut url) if url.scheme() == "file" => {
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments.pop_if_empty().push(stored);
                }
                url.to_string()
            }
            _ => format!("{}/{stored}", self.base),
        }
    }

    /// The location, as a URL.
    pub fn location(&self) -> &str {
        &self.base
    }
}

/// The directory (a path for a `file://` URL, the location's URL otherwise) and the stored name
/// of the file recorded as `url`.
pub(crate) fn split_url(url: &str) -> Result<(String, String), Error> {
    if url.starts_with("file://") {
        let real = url::Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| Error::Location(format!("not a file URL: {url}")))?;
        return match (real.parent(), real.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => Ok((dir.display().to_string(), name.to_owned())),
            _ => Err(Error::Location(format!(
                "not an archived file's URL: {url}"
            ))),
        };
    }
    url.rsplit_once('/')
        .map(|(dir, name)| (dir.to_owned(), name.to_owned()))
        .ok_or_else(|| Error::Location(format!("not an archived file's URL: {url}")))
}

/// The name the store gives a file named `name`.
pub(crate) fn stored_name(name: &str) -> String {
    PathPart::from(name).as_ref().to_owned()
}

/// Parquet's reader over an object: byte ranges and the footer, fetched as the reader asks.
#[derive(Debug, Clone)]
pub(crate) struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

impl ObjectReader {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        ObjectReader { store, path }
    }
}

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(parquet_error)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_via_suffix_and_finish(self)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl MetadataSuffixFetch for &mut ObjectReader {
    fn fetch_suffix(&mut self, suffix: usize) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let options = GetOptions {
            range: Some(GetRange::Suffix(suffix as u64)),
            ..Default::default()
        };
        async move {
            let response = self
                .store
                .get_opts(&self.path, options)
                .await
                .map_err(parquet_error)?;
            response.bytes().await.map_err(parquet_error)
        }
        .boxed()
    }
}
