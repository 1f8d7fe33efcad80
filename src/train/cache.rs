//! Image embeddings computed once per training image and kept on disk (`models/cache/`), so
//! training never runs the image encoder twice for the same image.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use futures_lite::future::block_on;

use super::dataset::ImageItem;
use crate::error::{Error, Result};
use crate::image::decode_image;
use crate::image::preprocess::scaled_size;
use crate::segment::{read_f32, BoxSegmenter, ImageEmbedding};

const CHANNELS: usize = 256;
const SIDE: usize = 64;

pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn path(&self, item: &ImageItem) -> PathBuf {
        self.dir.join(format!("{}.f32", item.id.replace('/', "__")))
    }

    /// Encodes every item not cached yet, reporting progress.
    pub fn fill(&self, segmenter: &BoxSegmenter, items: &[&ImageItem], log: &mut dyn FnMut(&str)) -> Result<()> {
        let missing: Vec<&&ImageItem> = items.iter().filter(|i| !self.path(i).exists()).collect();
        for (n, item) in missing.iter().enumerate() {
            let bytes = std::fs::read(&item.image).map_err(|e| Error::io(&item.image, e))?;
            let embedding = segmenter.encode(&decode_image(&bytes)?);
            let values = block_on(read_f32(embedding.tensor))?;
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            crate::weights::store::write_atomic(&self.path(item), &raw)?;
            if n % 10 == 9 || n + 1 == missing.len() {
                log(&format!("embeddings: {}/{} encoded", n + 1, missing.len()));
            }
        }
        Ok(())
    }

    /// The cached `[1, 256, 64, 64]` embedding of an item.
    pub fn load(&self, item: &ImageItem, device: &Device) -> Result<Tensor<4>> {
        let path = self.path(item);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.len() != CHANNELS * SIDE * SIDE * 4 {
            return Err(Error::Other(format!("{}: wrong size, delete it to re-encode", path.display())));
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(Tensor::<1>::from_data(TensorData::new(values, [CHANNELS * SIDE * SIDE]), device).reshape([1, CHANNELS, SIDE, SIDE]))
    }

    /// The cached embedding of an item with the image geometry answers are mapped back through
    /// (every record of an item has the image's size).
    pub fn load_embedding(&self, item: &ImageItem, device: &Device) -> Result<ImageEmbedding> {
        let tensor = self.load(item, device)?;
        let first = item.objects.first().ok_or_else(|| Error::Other(format!("{}: no annotated object", item.id)))?;
        let (width, height, scale) = scaled_size(first.width, first.height);
        Ok(ImageEmbedding { tensor, scaled_size: (width, height), original_size: (first.width, first.height), scale })
    }
}
