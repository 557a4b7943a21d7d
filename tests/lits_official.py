# ruff: noqa
# fmt: off
"""Literal port of the official LiTS scorer, for tests only (not part of livseg).

Provenance:

* ``detect_lesions``, ``compute_tumor_burden``, ``compute_segmentation_scores``: file
  ``program/helpers/calc_metric.py`` of github.com/PatrickChrist/lits-challenge-scoring, branch
  ``miccai``, commit b9d13be59d17f1af0f13dca3ce92d3e9234b17c5 (the final official scorer, run on
  CodaLab; = ``master`` 090307d plus a crash fix for references without lesions).
* ``official_scores``: the per-volume loop body and the summary of ``program/evaluate.py`` of the
  same commit, wrapped in a function that takes the arrays the script loads (``int8`` arrays in
  nibabel's (x, y, z) order and ``header.get_zooms()[:3]``) instead of reading folders; the
  printing is silenced (``_print``). Returns the values the script writes to ``scores.txt``,
  before its ``{:.3f}`` formatting.
* ``detect_lesions_0ceebcf``: ``detect_lesions`` of github.com/veugene/lits-challenge-scoring,
  branch ``clinical_eval``, commit 0ceebcfc0bcb0930c9d8e25dba7d1d1f39468dea (the author's fixed
  counting: returns TP, FP, FN).

Licence: the PatrickChrist repository carries no licence file at any commit. The code's author,
Eugene Vorontsov, licensed his fork (which holds the same functions: ``master`` 090307d differs
from b9d13be only in the three lines b9d13be fixes) under the GNU LGPL-3.0 (commit 9d4ce85,
``LICENSE.txt``); this port is used under that licence, for testing only, and is not shipped in
the livseg package. Copyright of the ported code: its authors (Eugene Vorontsov, Patrick Christ).
MedPy's ``Surface`` class (GPL-3.0), which the official code imports from
``program/helpers/surface.py``, is NOT copied: ``Surface`` below is a small stand-in written for
these tests that computes the same quantities (18-neighbourhood contour = mask XOR binary
erosion, KD-tree nearest neighbours in mm, pooled mean / RMS / maximum).

Changed lines (only what no longer runs on numpy 2.x / scipy 1.17), each marked ``# FIXED n``:

1.-3. ``sum_dims``: ``x[sum_slices]``, ``mask[mask_slices]``, ``x_ret[replace_slices]`` index
      with a list of slices, which numpy >= 1.23 rejects; now ``tuple(...)``.
4.    ``ndimage.find_objects(target_mask)`` on a bool array fails in scipy >= 1.15 (``max_label``
      becomes a numpy bool); now ``find_objects(target_mask, max_label=1)`` (same result).
5.    ``from scipy.ndimage.measurements import label`` (namespace deprecated, removed in scipy 2):
      ``from scipy.ndimage import label``.

Everything else, bugs included, is as in the originals (the dtype of ``detected_mask`` is
uint8, the union compares ``d==p_id``, etc.).
"""
from __future__ import print_function
import gc
from collections import OrderedDict

from medpy import metric
import numpy as np
from scipy import ndimage
from scipy.ndimage import label as label_connected_components  # FIXED 5

LARGE = 9001


def _print(*args, **kwargs):
    pass


class _time_elapsed(object):
    def __call__(self):
        return 0.0

    def total_elapsed(self):
        return 0.0


class Surface(object):
    """Stand-in for MedPy's ``Surface`` (r0.4.1) as used by the official scorer (not a copy)."""

    def __init__(self, mask, reference, physical_voxel_spacing=(1, 1, 1),
                 mask_offset=(0, 0, 0), reference_offset=(0, 0, 0)):
        from scipy.spatial import cKDTree
        footprint = ndimage.generate_binary_structure(3, 2)
        pts = []
        for arr, offset in ((mask, mask_offset), (reference, reference_offset)):
            arr = np.asarray(arr, dtype=bool)
            edge = arr ^ ndimage.binary_erosion(arr, footprint)
            p = (np.argwhere(edge) + np.asarray(offset)) * np.asarray(physical_voxel_spacing)
            if len(p) == 0:
                raise Exception("empty object")
            pts.append(p)
        self._m, self._r = pts
        self._r_to_m = cKDTree(self._m).query(self._r)[0]
        self._m_to_r = cKDTree(self._r).query(self._m)[0]

    def get_maximum_symmetric_surface_distance(self):
        return max(self._m_to_r.max(), self._r_to_m.max())

    def get_root_mean_square_symmetric_surface_distance(self):
        n = len(self._m) + len(self._r)
        sq = (self._m_to_r ** 2).sum() + (self._r_to_m ** 2).sum()
        return np.sqrt(1.0 / n) * np.sqrt(sq)

    def get_average_symmetric_surface_distance(self):
        n = len(self._m) + len(self._r)
        return 1.0 / n * (self._m_to_r.sum() + self._r_to_m.sum())


def dice(input1, input2):
    return metric.dc(input1, input2)


def detect_lesions(prediction_mask, reference_mask, min_overlap=0.5):
    """
    Produces a mask for predicted lesions and a mask for reference lesions,
    with label IDs matching lesions together.
    
    Given a prediction and a reference mask, output a modified version of
    each where objects that overlap between the two mask share a label. This
    requires merging labels in the reference mask that are spanned by a single
    prediction and merging labels in the prediction mask that are spanned by
    a single reference. In cases where a label can be merged, separately, with
    more than one other label, a single merge option (label) is chosen to 
    accord the greatest overlap between the reference and prediction objects.
    
    After merging and matching, objects in the reference are considered
    detected if their respective predictions overlap them by more than
    `min_overlap` (intersection over union).
    
    :param prediction_mask: numpy.array
    :param reference_mask: numpy.array
    :param min_overlap: float in range [0, 1.]
    :return: prediction mask (int),
             reference mask (int),
             num_detected
    """
    
    # Initialize
    detected_mask = np.zeros(prediction_mask.shape, dtype=np.uint8)
    mod_reference_mask = np.copy(reference_mask)
    num_detected = 0
    if not np.any(reference_mask):
        return detected_mask, num_detected, 0
    
    if not min_overlap>0 and not min_overlap<=1:
        raise ValueError("min_overlap must be in [0, 1.]")
    
    # Get available IDs (excluding 0)
    # 
    # To reduce computation time, check only those lesions in the prediction 
    # that have any overlap with the ground truth.
    p_id_list = np.unique(prediction_mask[reference_mask.nonzero()])
    if p_id_list[0]==0:
        p_id_list = p_id_list[1:]
    g_id_list = np.unique(reference_mask)
    if g_id_list[0]==0:
        g_id_list = g_id_list[1:]
    
    # To reduce computation time, get views into reduced size masks.
    reduced_prediction_mask = rpm = prediction_mask.copy()
    for p_id in np.unique(prediction_mask):
        if p_id not in p_id_list and p_id!=0:
            reduced_prediction_mask[(rpm==p_id).nonzero()] = 0
    target_mask = np.logical_or(reference_mask, reduced_prediction_mask)
    bounding_box = ndimage.find_objects(target_mask, max_label=1)[0]  # FIXED 4
    r = reference_mask[bounding_box]
    p = prediction_mask[bounding_box]
    d = detected_mask[bounding_box]
    m = mod_reference_mask[bounding_box]

    # Compute intersection of predicted lesions with reference lesions.
    intersection_matrix = np.zeros((len(p_id_list), len(g_id_list)),
                                    dtype=np.int32)
    for i, p_id in enumerate(p_id_list):
        for j, g_id in enumerate(g_id_list):
            intersection = np.count_nonzero(np.logical_and(p==p_id, r==g_id))
            intersection_matrix[i, j] = intersection
    
    def sum_dims(x, axis, dims):
        '''
        Given an array x, collapses dimensions listed in dims along the 
        specified axis, summing them together. Returns the reduced array.
        '''
        x = np.array(x)
        if len(dims) < 2:
            return x
        
        # Initialize output
        new_shape = list(x.shape)
        new_shape[axis] -= len(dims)-1
        x_ret = np.zeros(new_shape, dtype=x.dtype)
        
        # Sum over dims on axis
        sum_slices = [slice(None)]*x.ndim
        sum_slices[axis] = dims
        dim_sum = np.sum(x[tuple(sum_slices)], axis=axis, keepdims=True)  # FIXED 1
        
        # Remove all but first dim in dims
        mask = np.ones(x.shape, dtype=np.bool)
        mask_slices = [slice(None)]*x.ndim
        mask_slices[axis] = dims[1:]
        mask[tuple(mask_slices)] = 0  # FIXED 2
        x_ret.ravel()[...] = x[mask]
        
        # Put dim_sum into array at first dim
        replace_slices = [slice(None)]*x.ndim
        replace_slices[axis] = [dims[0]]
        x_ret[tuple(replace_slices)] = dim_sum  # FIXED 3
        
        return x_ret
            
    # Merge and label reference lesions that are connected by predicted
    # lesions.
    g_merge_count = dict([(g_id, 1) for g_id in g_id_list])
    for i, p_id in enumerate(p_id_list):
        # Identify g_id intersected by p_id
        g_id_indices = intersection_matrix[i].nonzero()[0]
        g_id_intersected = g_id_list[g_id_indices]
        
        # Make sure g_id are matched to p_id deterministically regardless of 
        # label order. Only merge those g_id which overlap this p_id more than
        # others.
        g_id_merge = []
        g_id_merge_indices = []
        for k, g_id in enumerate(g_id_intersected):
            idx = g_id_indices[k]
            if np.argmax(intersection_matrix[:, idx], axis=0)==i:
                # This g_id has the largest overlap with this p_id: merge.
                g_id_merge.append(g_id)
                g_id_merge_indices.append(idx)
                
        # Update merge count
        for g_id in g_id_merge:
            g_merge_count[g_id] = len(g_id_merge)
                
        # Merge. Update g_id_list, intersection matrix, mod_reference_mask.
        # Merge columns in intersection_matrix.
        g_id_list = np.delete(g_id_list, obj=g_id_merge_indices[1:])
        for g_id in g_id_merge:
            m[m==g_id] = g_id_merge[0]
        intersection_matrix = sum_dims(intersection_matrix,
                                       axis=1,
                                       dims=g_id_merge_indices)
    
    # Match each predicted lesion to a single (merged) reference lesion.
    max_val = np.max(intersection_matrix, axis=1)
    max_indices = np.argmax(intersection_matrix, axis=1)
    intersection_matrix[...] = 0
    intersection_matrix[np.arange(len(p_id_list)), max_indices] = max_val
    
    # Merge and label predicted lesions that are connected by reference
    # lesions.
    #
    # Merge rows in intersection_matrix.
    #
    # Here, it's fine to merge all p_id that are connected by a g_id since
    # each p_id has already been associated with only one g_id.
    for j, g_id in enumerate(g_id_list):
        p_id_indices = intersection_matrix[:,j].nonzero()[0]
        p_id_intersected = p_id_list[p_id_indices]
        intersection_matrix = sum_dims(intersection_matrix,
                                       axis=0,
                                       dims=p_id_indices)
        p_id_list = np.delete(p_id_list, obj=p_id_indices[1:])
        for p_id in p_id_intersected:
            d[p==p_id] = g_id
            
    # Trim away lesions deemed undetected.
    num_detected = len(p_id_list)
    for i, p_id in enumerate(p_id_list):
        for j, g_id in enumerate(g_id_list):
            intersection = intersection_matrix[i, j]
            if intersection==0:
                continue
            union = np.count_nonzero(np.logical_or(d==p_id, m==g_id))
            overlap_fraction = float(intersection)/union
            if overlap_fraction <= min_overlap:
                d[d==g_id] = 0      # Assuming one-to-one p_id <--> g_id
                num_detected -= g_merge_count[g_id]
                
    return detected_mask, mod_reference_mask, num_detected


def compute_tumor_burden(prediction_mask, reference_mask):
    """
    Calculates the tumor_burden and evalutes the tumor burden metrics RMSE and
    max error.
    
    :param prediction_mask: numpy.array
    :param reference_mask: numpy.array
    :return: dict with RMSE and Max error
    """
    def calc_tumor_burden(vol):
        num_liv_pix=np.count_nonzero(vol>=1)
        num_les_pix=np.count_nonzero(vol==2)
        return num_les_pix/float(num_liv_pix)
    tumor_burden_r = calc_tumor_burden(reference_mask)
    if np.count_nonzero(prediction_mask==1):
        tumor_burden_p = calc_tumor_burden(prediction_mask)
    else:
        tumor_burden_p = LARGE

    tumor_burden_diff = tumor_burden_r - tumor_burden_p
    return tumor_burden_diff


def compute_segmentation_scores(prediction_mask, reference_mask,
                                voxel_spacing):
    """
    Calculates metrics scores from numpy arrays and returns an dict.
    
    Assumes that each object in the input mask has an integer label that 
    defines object correspondence between prediction_mask and 
    reference_mask.
    
    :param prediction_mask: numpy.array, int
    :param reference_mask: numpy.array, int
    :param voxel_spacing: list with x,y and z spacing
    :return: dict with dice, jaccard, voe, rvd, assd, rmsd, and msd
    """
    
    scores = {'dice': [],
              'jaccard': [],
              'voe': [],
              'rvd': [],
              'assd': [],
              'rmsd': [],
              'msd': []}
    
    for i, obj_id in enumerate(np.unique(prediction_mask)):
        if obj_id==0:
            continue    # 0 is background, not an object; skip

        # Limit processing to the bounding box containing both the prediction
        # and reference objects.
        target_mask = (reference_mask==obj_id)+(prediction_mask==obj_id)
        bounding_box = ndimage.find_objects(target_mask, max_label=1)[0]  # FIXED 4
        p = (prediction_mask==obj_id)[bounding_box]
        r = (reference_mask==obj_id)[bounding_box]
        if np.any(p) and np.any(r):
            dice = metric.dc(p,r)
            jaccard = dice/(2.-dice)
            scores['dice'].append(dice)
            scores['jaccard'].append(jaccard)
            scores['voe'].append(1.-jaccard)
            scores['rvd'].append(metric.ravd(r,p))
            evalsurf = Surface(p, r,
                               physical_voxel_spacing=voxel_spacing,
                               mask_offset=[0.,0.,0.],
                               reference_offset=[0.,0.,0.])
            assd = evalsurf.get_average_symmetric_surface_distance()
            rmsd = evalsurf.get_root_mean_square_symmetric_surface_distance()
            msd = evalsurf.get_maximum_symmetric_surface_distance()
            scores['assd'].append(assd)
            scores['rmsd'].append(rmsd)
            scores['msd'].append(msd)
        else:
            # There are no objects in the prediction, in the reference, or both
            scores['dice'].append(0)
            scores['jaccard'].append(0)
            scores['voe'].append(1.)
            
            # Surface distance (and volume difference) metrics between the two
            # masks are meaningless when any one of the masks is empty. Assign 
            # maximum penalty. The average score for these metrics, over all 
            # objects, will thus also not be finite as it also loses meaning.
            scores['rvd'].append(LARGE)
            scores['assd'].append(LARGE)
            scores['rmsd'].append(LARGE)
            scores['msd'].append(LARGE)
              
    return scores


def official_scores(volumes):
    """The official evaluate.py on ``[(submission_volume, reference_volume, voxel_spacing)]``.

    Arrays: int8 labels in nibabel (x, y, z) order; ``voxel_spacing``: header zooms (x, y, z).
    Returns the flat dict of values the script writes to ``scores.txt`` (unrounded), keyed by
    its names, plus ``per_case_detection``: the (TP, FP, FN) of each case at 0 and 0.5.
    """
    segmentation_metrics = {'dice': 0,
                            'jaccard': 0,
                            'voe': 1,
                            'rvd': LARGE,
                            'assd': LARGE,
                            'rmsd': LARGE,
                            'msd': LARGE}

    # Initialize results dictionaries
    lesion_detection_stats = {0:   {'TP': 0, 'FP': 0, 'FN': 0},
                              0.5: {'TP': 0, 'FP': 0, 'FN': 0}}
    lesion_segmentation_scores = {}
    liver_segmentation_scores = {}
    dice_per_case = {'lesion': [], 'liver': []}
    dice_global_x = {'lesion': {'I': 0, 'S': 0},
                     'liver':  {'I': 0, 'S': 0}} # 2*I/S
    tumor_burden_list = []

    per_case_detection = []
    for submission_volume, reference_volume, voxel_spacing in volumes:
        t = _time_elapsed()
        before = {o: dict(lesion_detection_stats[o]) for o in (0, 0.5)}
        # Create lesion and liver masks with labeled connected components.
        # (Assuming there is always exactly one liver - one connected comp.)
        pred_mask_lesion, num_predicted = label_connected_components( \
                                             submission_volume==2, output=np.int16)
        true_mask_lesion, num_reference = label_connected_components( \
                                             reference_volume==2, output=np.int16)
        pred_mask_liver = submission_volume>=1
        true_mask_liver = reference_volume>=1
        liver_prediction_exists = np.any(submission_volume==1)
        _print("Done finding connected components ({:.2f} seconds)".format(t()))

        # Identify detected lesions.
        # Retain detected_mask_lesion for overlap > 0.5
        for overlap in [0, 0.5]:
            detected_mask_lesion, mod_ref_mask, num_detected = detect_lesions( \
                                                  prediction_mask=pred_mask_lesion,
                                                  reference_mask=true_mask_lesion,
                                                  min_overlap=overlap)

            # Count true/false positive and false negative detections.
            lesion_detection_stats[overlap]['TP']+=num_detected
            lesion_detection_stats[overlap]['FP']+=num_predicted-num_detected
            lesion_detection_stats[overlap]['FN']+=num_reference-num_detected
        _print("Done identifying detected lesions ({:.2f} seconds)".format(t()))

        # Compute segmentation scores for DETECTED lesions.
        if num_detected>0:
            lesion_scores = compute_segmentation_scores( \
                                              prediction_mask=detected_mask_lesion,
                                              reference_mask=mod_ref_mask,
                                              voxel_spacing=voxel_spacing)
            for metric in segmentation_metrics:
                if metric not in lesion_segmentation_scores:
                    lesion_segmentation_scores[metric] = []
                lesion_segmentation_scores[metric].extend(lesion_scores[metric])
            _print("Done computing lesion scores ({:.2f} seconds)".format(t()))
        else:
            _print("No lesions detected, skipping lesion score evaluation")

        # Compute liver segmentation scores. 
        if liver_prediction_exists:
            liver_scores = compute_segmentation_scores( \
                                              prediction_mask=pred_mask_liver,
                                              reference_mask=true_mask_liver,
                                              voxel_spacing=voxel_spacing)
            for metric in segmentation_metrics:
                if metric not in liver_segmentation_scores:
                    liver_segmentation_scores[metric] = []
                liver_segmentation_scores[metric].extend(liver_scores[metric])
            _print("Done computing liver scores ({:.2f} seconds)".format(t()))
        else:
            # No liver label. Record default score values (zeros, inf).
            # NOTE: This will make some metrics evaluate to inf over the entire
            # dataset.
            for metric in segmentation_metrics:
                if metric not in liver_segmentation_scores:
                    liver_segmentation_scores[metric] = []
                liver_segmentation_scores[metric].append(\
                                                      segmentation_metrics[metric])
            _print("No liver label provided, skipping liver score evaluation")

        # Compute per-case (per patient volume) dice.
        if not np.any(pred_mask_lesion) and not np.any(true_mask_lesion):
            dice_per_case['lesion'].append(1.)
        else:
            dice_per_case['lesion'].append(dice(pred_mask_lesion,
                                                true_mask_lesion))
        if liver_prediction_exists:
            dice_per_case['liver'].append(dice(pred_mask_liver,
                                               true_mask_liver))
        else:
            dice_per_case['liver'].append(0)

        # Accumulate stats for global (dataset-wide) dice score.
        dice_global_x['lesion']['I'] += np.count_nonzero( \
            np.logical_and(pred_mask_lesion, true_mask_lesion))
        dice_global_x['lesion']['S'] += np.count_nonzero(pred_mask_lesion) + \
                                        np.count_nonzero(true_mask_lesion)
        if liver_prediction_exists:
            dice_global_x['liver']['I'] += np.count_nonzero( \
                np.logical_and(pred_mask_liver, true_mask_liver))
            dice_global_x['liver']['S'] += np.count_nonzero(pred_mask_liver) + \
                                           np.count_nonzero(true_mask_liver)
        else:
            # NOTE: This value should never be zero.
            dice_global_x['liver']['S'] += np.count_nonzero(true_mask_liver)


        _print("Done computing additional dice scores ({:.2f} seconds)"
              "".format(t()))

        # Compute tumor burden.
        tumor_burden = compute_tumor_burden(prediction_mask=submission_volume,
                                            reference_mask=reference_volume)
        tumor_burden_list.append(tumor_burden)
        _print("Done computing tumor burden diff ({:.2f} seconds)".format(t()))

        _print("Done processing volume (total time: {:.2f} seconds)"
              "".format(t.total_elapsed()))
        gc.collect()
        per_case_detection.append({
            o: tuple(lesion_detection_stats[o][k] - before[o][k] for k in ('TP', 'FP', 'FN'))
            for o in (0, 0.5)})

    # Compute lesion detection metrics.
    _det = {}
    for overlap in [0, 0.5]:
        TP = lesion_detection_stats[overlap]['TP']
        FP = lesion_detection_stats[overlap]['FP']
        FN = lesion_detection_stats[overlap]['FN']
        precision = float(TP)/(TP+FP) if TP+FP else 0
        recall = float(TP)/(TP+FN) if TP+FN else 0
        _det[overlap] = {'p': precision, 'r': recall}
    lesion_detection_metrics = {'precision': _det[0.5]['p'],
                                'recall': _det[0.5]['r'],
                                'precision_greater_zero': _det[0]['p'],
                                'recall_greater_zero': _det[0]['r']}

    # Compute lesion segmentation metrics.
    lesion_segmentation_metrics = {}
    for m in lesion_segmentation_scores:
        lesion_segmentation_metrics[m] = np.mean(lesion_segmentation_scores[m])
    if len(lesion_segmentation_scores)==0:
        # Nothing detected - set default values.
        lesion_segmentation_metrics.update(segmentation_metrics)
    lesion_segmentation_metrics['dice_per_case'] = np.mean(dice_per_case['lesion'])
    dice_global = 0
    if dice_global_x['lesion']['S'] > 0:
        dice_global = 2.*dice_global_x['lesion']['I']/dice_global_x['lesion']['S']
    lesion_segmentation_metrics['dice_global'] = dice_global

    # Compute liver segmentation metrics.
    liver_segmentation_metrics = {}
    for m in liver_segmentation_scores:
        liver_segmentation_metrics[m] = np.mean(liver_segmentation_scores[m])
    if len(liver_segmentation_scores)==0:
        # Nothing detected - set default values.
        liver_segmentation_metrics.update(segmentation_metrics)
    liver_segmentation_metrics['dice_per_case'] = np.mean(dice_per_case['liver'])
    dice_global = 2.*dice_global_x['liver']['I']/dice_global_x['liver']['S']
    liver_segmentation_metrics['dice_global'] = dice_global

    # Compute tumor burden.
    tumor_burden_rmse = np.sqrt(np.mean(np.square(tumor_burden_list)))
    tumor_burden_max = np.max(tumor_burden_list)

    out = {}
    for metric_, value in lesion_detection_metrics.items():
        out["lesion_" + metric_] = float(value)
    for metric_, value in lesion_segmentation_metrics.items():
        out["lesion_" + metric_] = float(value)
    for metric_, value in liver_segmentation_metrics.items():
        out["liver_" + metric_] = float(value)
    out["RMSE_Tumorburden"] = float(tumor_burden_rmse)
    out["MAXERROR_Tumorburden"] = float(tumor_burden_max)
    out["per_case_detection"] = per_case_detection
    return out


def detect_lesions_0ceebcf(prediction_mask, reference_mask, min_overlap=0.5):
    """
    Produces a mask for predicted lesions and a mask for reference lesions,
    with label IDs matching lesions together.
    
    Given a prediction and a reference mask, output a modified version of
    each where objects that overlap between the two mask share a label. This
    requires merging labels in the reference mask that are spanned by a single
    prediction and merging labels in the prediction mask that are spanned by
    a single reference. In cases where a label can be merged, separately, with
    more than one other label, a single merge option (label) is chosen to 
    accord the greatest overlap between the reference and prediction objects.
    
    After merging and matching, objects in the reference are considered
    detected if their respective predictions overlap them by more than
    `min_overlap` (intersection over union).
    
    :param prediction_mask: numpy.array
    :param reference_mask: numpy.array
    :param min_overlap: float in range [0, 1.]
    :return: prediction mask (int),
             reference mask (int),
             TP (int),
             FP (int),
             FN (int),
             num_merge_errors (int),
             num_split_errors (int),
             g_id_detected (dict),
             id_mapping (dict)
    """
    
    # Initialize
    detected_mask = np.zeros(prediction_mask.shape, dtype=np.uint8)
    mod_reference_mask = np.copy(reference_mask)
    num_detected = 0
    if not np.any(reference_mask):
        return detected_mask, num_detected, 0, 0, 0
    
    if not min_overlap>0 and not min_overlap<=1:
        raise ValueError("min_overlap must be in [0, 1.]")
    
    # Get available IDs (excluding 0)
    # 
    # To reduce computation time, check only those lesions in the prediction 
    # that have any overlap with the ground truth.
    p_id_list = np.unique(prediction_mask[reference_mask.nonzero()])
    if p_id_list[0]==0:
        p_id_list = p_id_list[1:]
    g_id_list = np.unique(reference_mask)
    if g_id_list[0]==0:
        g_id_list = g_id_list[1:]
    
    # To reduce computation time, get views into reduced size masks.
    p_id_fp = []
    reduced_prediction_mask = rpm = prediction_mask.copy()
    for p_id in np.unique(prediction_mask):
        if p_id not in p_id_list and p_id!=0:
            reduced_prediction_mask[(rpm==p_id).nonzero()] = 0
            p_id_fp.append(p_id)
    target_mask = np.logical_or(reference_mask, reduced_prediction_mask)
    bounding_box = ndimage.find_objects(target_mask, max_label=1)[0]  # FIXED 4
    r = reference_mask[bounding_box]
    p = prediction_mask[bounding_box]
    d = detected_mask[bounding_box]
    m = mod_reference_mask[bounding_box]

    # Compute intersection of predicted lesions with reference lesions.
    intersection_matrix = np.zeros((len(p_id_list), len(g_id_list)),
                                    dtype=np.int32)
    for i, p_id in enumerate(p_id_list):
        for j, g_id in enumerate(g_id_list):
            intersection = np.count_nonzero(np.logical_and(p==p_id, r==g_id))
            intersection_matrix[i, j] = intersection
    
    def sum_dims(x, axis, dims):
        '''
        Given an array x, collapses dimensions listed in dims along the 
        specified axis, summing them together. Returns the reduced array.
        '''
        x = np.array(x)
        if len(dims) < 2:
            return x
        
        # Initialize output
        new_shape = list(x.shape)
        new_shape[axis] -= len(dims)-1
        x_ret = np.zeros(new_shape, dtype=x.dtype)
        
        # Sum over dims on axis
        sum_slices = [slice(None)]*x.ndim
        sum_slices[axis] = dims
        dim_sum = np.sum(x[tuple(sum_slices)], axis=axis, keepdims=True)  # FIXED 1
        
        # Remove all but first dim in dims
        mask = np.ones(x.shape, dtype=np.bool)
        mask_slices = [slice(None)]*x.ndim
        mask_slices[axis] = dims[1:]
        mask[tuple(mask_slices)] = 0  # FIXED 2
        x_ret.ravel()[...] = x[mask]
        
        # Put dim_sum into array at first dim
        replace_slices = [slice(None)]*x.ndim
        replace_slices[axis] = [dims[0]]
        x_ret[tuple(replace_slices)] = dim_sum  # FIXED 3
        
        return x_ret
            
    # Merge and label reference lesions that are connected by predicted
    # lesions.
    g_merged_ids = OrderedDict([(g_id, [g_id]) for g_id in g_id_list])
    num_merge_errors = 0
    for i, p_id in enumerate(p_id_list):
        # Identify g_id intersected by p_id
        g_id_indices = intersection_matrix[i].nonzero()[0]
        g_id_intersected = g_id_list[g_id_indices]
        
        # Make sure g_id are matched to p_id deterministically regardless of 
        # label order. Only merge those g_id which overlap this p_id more than
        # others.
        g_id_merge = []
        g_id_merge_indices = []
        for k, g_id in enumerate(g_id_intersected):
            idx = g_id_indices[k]
            if np.argmax(intersection_matrix[:, idx], axis=0)==i:
                # This g_id has the largest overlap with this p_id: merge.
                g_id_merge.append(g_id)
                g_id_merge_indices.append(idx)
                
        # Update merge error count
        num_merge_errors += max(0, len(g_id_merge)-1)
                
        # Merge. Update g_id_list, intersection matrix, mod_reference_mask.
        # Merge columns in intersection_matrix.
        g_id_list = np.delete(g_id_list, obj=g_id_merge_indices[1:])
        for g_id in g_id_merge:
            m[m==g_id] = g_id_merge[0]
        intersection_matrix = sum_dims(intersection_matrix,
                                       axis=1,
                                       dims=g_id_merge_indices)
                                       
        # Keep track of which ids were merged.
        for g_id in g_id_merge:
            g_merged_ids[g_id] = g_id_merge
    
    # Match each predicted lesion to a single (merged) reference lesion.
    max_val = np.max(intersection_matrix, axis=1)
    max_indices = np.argmax(intersection_matrix, axis=1)
    intersection_matrix[...] = 0
    intersection_matrix[np.arange(len(p_id_list)), max_indices] = max_val
    
    # Merge and label predicted lesions that are connected by reference
    # lesions.
    #
    # Merge rows in intersection_matrix.
    #
    # Here, it's fine to merge all p_id that are connected by a g_id since
    # each p_id has already been associated with only one g_id.
    p_merged_ids = OrderedDict([(p_id, [p_id]) for p_id in p_id_list])
    num_split_errors = 0
    for j, g_id in enumerate(g_id_list):
        p_id_indices = intersection_matrix[:,j].nonzero()[0]
        p_id_intersected = p_id_list[p_id_indices]
        intersection_matrix = sum_dims(intersection_matrix,
                                       axis=0,
                                       dims=p_id_indices)
        p_id_list = np.delete(p_id_list, obj=p_id_indices[1:])
        for p_id in p_id_intersected:
            d[p==p_id] = g_id       # One-to-one p_id <--> g_id
        num_split_errors += max(0,
                                len(p_id_intersected)-len(g_merged_ids[g_id]))
        # Keep track of which ids were merged.
        for p_id in p_id_intersected:
            p_merged_ids[p_id] = p_id_intersected
            
    # Identify detected lesions.
    FP = len(p_id_fp)               # Every p_id not intersecting a g_id
    g_id_detected = OrderedDict([(g_id, 0) for g_id in g_id_list])
    for i, p_id in enumerate(p_id_list):
        for j, g_id in enumerate(g_id_list):
            intersection = intersection_matrix[i, j]
            if intersection==0:
                continue
            union = np.count_nonzero(np.logical_or(d==g_id, m==g_id))
            overlap_fraction = float(intersection)/union
            if overlap_fraction <= min_overlap:
                d[d==g_id] = 0      # Assuming one-to-one p_id <--> g_id
                FP += len(p_merged_ids[p_id])   # Num p_id merged together
            else:
                # Note which g_id were detected.
                for _g_id in g_merged_ids[g_id]:
                    g_id_detected[_g_id] = 1
    TP = sum([v==1 for v in g_id_detected.values()])    # Non-merged g_id
    FN = sum([v==0 for v in g_id_detected.values()])    # Non-merged g_id
                
    # Specify mapping of reference ids to predicted ids (handle merges).
    id_mapping = OrderedDict()
    for key in g_merged_ids.keys():
        id_mapping[key] = g_merged_ids[key][0]
                
    return (detected_mask, mod_reference_mask,
            TP, FP, FN, num_merge_errors, num_split_errors,
            g_id_detected, id_mapping)
