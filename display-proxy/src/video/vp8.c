/* A VP8 encoder for one region of a desktop: Debian's libvpx (libvpx-dev), linked in
 * statically by build.rs. This shim keeps libvpx's configuration structures (whose layout
 * depends on the library's version) on the C side: Rust sees an opaque encoder and plain
 * numbers. Real-time settings only: no look-ahead, one thread, constant bitrate, key frames
 * only when asked for. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vpx/vp8cx.h>
#include <vpx/vpx_encoder.h>

struct atrium_vp8 {
  vpx_codec_ctx_t codec;
  vpx_codec_enc_cfg_t cfg;
  unsigned width, height;
};

/* Returns NULL on failure, with the libvpx error code in *err. Width and height must be even
 * (libvpx's chroma layout for odd sizes differs from the one the caller writes). */
struct atrium_vp8 *atrium_vp8_new(unsigned width, unsigned height, unsigned kbps,
                                  int cpu_used, int *err) {
  if (width == 0 || height == 0 || (width | height) & 1) {
    *err = VPX_CODEC_INVALID_PARAM;
    return NULL;
  }
  struct atrium_vp8 *e = calloc(1, sizeof *e);
  if (!e) {
    *err = VPX_CODEC_MEM_ERROR;
    return NULL;
  }
  vpx_codec_err_t r = vpx_codec_enc_config_default(vpx_codec_vp8_cx(), &e->cfg, 0);
  if (r != VPX_CODEC_OK) {
    *err = r;
    free(e);
    return NULL;
  }
  e->width = width;
  e->height = height;
  e->cfg.g_w = width;
  e->cfg.g_h = height;
  /* Timestamps in milliseconds. */
  e->cfg.g_timebase.num = 1;
  e->cfg.g_timebase.den = 1000;
  e->cfg.g_threads = 1;
  e->cfg.g_lag_in_frames = 0;
  e->cfg.g_error_resilient = 0;
  e->cfg.g_pass = VPX_RC_ONE_PASS;
  e->cfg.rc_end_usage = VPX_CBR;
  e->cfg.rc_target_bitrate = kbps;
  /* Every frame is encoded: a dropped frame would leave the region stale on screen. */
  e->cfg.rc_dropframe_thresh = 0;
  e->cfg.rc_min_quantizer = 4;
  e->cfg.rc_max_quantizer = 56;
  e->cfg.rc_undershoot_pct = 50;
  e->cfg.rc_overshoot_pct = 50;
  e->cfg.rc_buf_initial_sz = 500;
  e->cfg.rc_buf_optimal_sz = 600;
  e->cfg.rc_buf_sz = 1000;
  e->cfg.kf_mode = VPX_KF_DISABLED;
  r = vpx_codec_enc_init(&e->codec, vpx_codec_vp8_cx(), &e->cfg, 0);
  if (r != VPX_CODEC_OK) {
    *err = r;
    free(e);
    return NULL;
  }
  if (vpx_codec_control(&e->codec, VP8E_SET_CPUUSED, cpu_used) != VPX_CODEC_OK ||
      vpx_codec_control(&e->codec, VP8E_SET_NOISE_SENSITIVITY, 0) != VPX_CODEC_OK ||
      vpx_codec_control(&e->codec, VP8E_SET_STATIC_THRESHOLD, 1) != VPX_CODEC_OK) {
    *err = vpx_codec_error(&e->codec) ? VPX_CODEC_INVALID_PARAM : VPX_CODEC_ERROR;
    vpx_codec_destroy(&e->codec);
    free(e);
    return NULL;
  }
  *err = VPX_CODEC_OK;
  return e;
}

int atrium_vp8_set_speed(struct atrium_vp8 *e, int cpu_used) {
  return vpx_codec_control(&e->codec, VP8E_SET_CPUUSED, cpu_used);
}

int atrium_vp8_set_bitrate(struct atrium_vp8 *e, unsigned kbps) {
  e->cfg.rc_target_bitrate = kbps;
  return vpx_codec_enc_config_set(&e->codec, &e->cfg);
}

/* Encodes one I420 picture (planes back to back, strides width and width / 2) taken at
 * `pts_ms`. Writes the compressed frame to out (at most cap bytes): its length to *len and
 * whether it is a key frame to *key. Returns 0, or a libvpx error code; -1 when the frame does
 * not fit in `cap` bytes. */
int atrium_vp8_encode(struct atrium_vp8 *e, const uint8_t *i420, int64_t pts_ms, int force_key,
                      uint8_t *out, size_t cap, size_t *len, int *key) {
  vpx_image_t img;
  if (!vpx_img_wrap(&img, VPX_IMG_FMT_I420, e->width, e->height, 1, (unsigned char *)i420)) {
    return VPX_CODEC_INVALID_PARAM;
  }
  vpx_codec_err_t r = vpx_codec_encode(&e->codec, &img, pts_ms, 1,
                                       force_key ? VPX_EFLAG_FORCE_KF : 0, VPX_DL_REALTIME);
  if (r != VPX_CODEC_OK) {
    return r;
  }
  *len = 0;
  *key = 0;
  vpx_codec_iter_t iter = NULL;
  const vpx_codec_cx_pkt_t *pkt;
  while ((pkt = vpx_codec_get_cx_data(&e->codec, &iter)) != NULL) {
    if (pkt->kind != VPX_CODEC_CX_FRAME_PKT) {
      continue;
    }
    if (pkt->data.frame.sz > cap - *len) {
      return -1;
    }
    memcpy(out + *len, pkt->data.frame.buf, pkt->data.frame.sz);
    *len += pkt->data.frame.sz;
    if (pkt->data.frame.flags & VPX_FRAME_IS_KEY) {
      *key = 1;
    }
  }
  return 0;
}

void atrium_vp8_free(struct atrium_vp8 *e) {
  vpx_codec_destroy(&e->codec);
  free(e);
}

/* A decoder, for tests and the benchmark to see what was encoded. */
#include <vpx/vp8dx.h>
#include <vpx/vpx_decoder.h>

vpx_codec_ctx_t *atrium_vp8_decoder_new(void) {
  vpx_codec_ctx_t *d = calloc(1, sizeof *d);
  if (d && vpx_codec_dec_init(d, vpx_codec_vp8_dx(), NULL, 0) != VPX_CODEC_OK) {
    free(d);
    return NULL;
  }
  return d;
}

/* Decodes one frame into out as I420 (planes back to back, strides width and
 * (width + 1) / 2); its size to *width and *height. Returns 0, a libvpx error code, -1 when
 * no picture came out, -2 when it does not fit in `cap` bytes. */
int atrium_vp8_decode(vpx_codec_ctx_t *d, const uint8_t *data, size_t len, uint8_t *out,
                      size_t cap, unsigned *width, unsigned *height) {
  vpx_codec_err_t r = vpx_codec_decode(d, data, (unsigned)len, NULL, 0);
  if (r != VPX_CODEC_OK) {
    return r;
  }
  vpx_codec_iter_t iter = NULL;
  vpx_image_t *img = vpx_codec_get_frame(d, &iter);
  if (!img) {
    return -1;
  }
  unsigned w = img->d_w, h = img->d_h, cw = (w + 1) / 2, ch = (h + 1) / 2;
  if ((size_t)w * h + 2 * (size_t)cw * ch > cap) {
    return -2;
  }
  for (unsigned y = 0; y < h; y++) {
    memcpy(out + (size_t)y * w, img->planes[0] + (size_t)y * img->stride[0], w);
  }
  uint8_t *u = out + (size_t)w * h, *v = u + (size_t)cw * ch;
  for (unsigned y = 0; y < ch; y++) {
    memcpy(u + (size_t)y * cw, img->planes[1] + (size_t)y * img->stride[1], cw);
    memcpy(v + (size_t)y * cw, img->planes[2] + (size_t)y * img->stride[2], cw);
  }
  *width = w;
  *height = h;
  return 0;
}

void atrium_vp8_decoder_free(vpx_codec_ctx_t *d) {
  vpx_codec_destroy(d);
  free(d);
}
