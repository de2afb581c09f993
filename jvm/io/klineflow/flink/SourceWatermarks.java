package io.klineflow.flink;

import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

import org.apache.flink.runtime.io.network.partition.consumer.IndexedInputGate;

import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.metrics.Gauge;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.types.Row;

/**
 * Event time and watermarks per source subtask, for a parse step that runs at a lower
 * parallelism than the Kafka source.
 *
 * <p>Input: {@code Row(key, payload, source, eventTime)} from the Python ingest step, where
 * {@code source} is the index of the source subtask whose batch the row came from ({@link
 * RecordBatcher} writes it in each batch) and {@code eventTime} the latest open time of the
 * row's bars ({@code Long.MIN_VALUE} for a dead letter, which moves no watermark). The ingest
 * step ends the rows of each batch with one under {@code batchEndKey} (a batch without
 * records, which each batcher sends when it opens, is that row alone: it announces the
 * source); with event time {@code Long.MAX_VALUE} it says the source has ended (a bounded
 * input), and that source no longer holds the watermark back. Batch-end rows are dropped.
 * Output: {@code Row(key, payload)} with {@code eventTime} as the record's timestamp.
 *
 * <p>What Flink does with a bounded-out-of-orderness generator with idleness per source
 * subtask and a downstream operator combining their watermarks, in one operator: each source
 * that is not idle (a row within {@code idlenessMs} of processing time; 0: never idle) has as
 * watermark its largest event time minus {@code outOfOrdernessMs} minus 1, and the operator
 * emits the smallest watermark of the sources not idle; when every source is idle, the
 * largest of their last watermarks (as Flink's input valve does when all its channels go
 * idle), then it marks itself idle so it holds no watermark downstream back; a row makes it
 * active again. Never backwards. It emits at every tick (the job's auto-watermark interval)
 * and at the end of every batch, so where a watermark stands when a row arrives downstream
 * depends on the order of the input and on its batches, not only on how fast it was read: a
 * bar that arrives a batch after the bars that move the watermark past its window is late
 * even when both were read within one tick (a bounded replay from one partition).
 *
 * <p>A source announced but without bars yet holds the watermark back until it goes idle, so
 * a partition read later than the others never makes their bars late; a source that comes
 * back from idleness behind the others holds them until it catches up (Flink would leave it
 * out until then, making its bars late). How many sources feed this subtask is read from its
 * task's input channels when it opens (one when the source is chained into the task), and a
 * source not heard from yet counts as one without bars: without that, a source subtask that
 * opens later than its sibling (a restore with a backlog) would find the watermark already
 * moved on by the sibling's bars, and its own would be late. The gauge {@code
 * watermarkSources} shows the count. Input watermarks are dropped except the end of input
 * ({@code Long.MAX_VALUE}).
 *
 * <p>The upstream must route each source subtask to one subtask of this operator ({@code
 * rescale} or {@code forward}), so a source's rows keep their order. No state: after a
 * restore the sources announce themselves again.
 */
public class SourceWatermarks extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, ProcessingTimeCallback {

    private static final long serialVersionUID = 1L;
    private static final long DEFAULT_INTERVAL_MS = 200L;

    private final long outOfOrdernessMs;
    private final long idlenessMs;
    private final String batchEndKey;

    /** Per source: {largest event time, processing time of its last row, its watermark}. */
    private transient Map<Integer, long[]> sources;

    /** Every source index heard from since this subtask opened, ended ones included. */
    private transient Set<Integer> heard;

    private transient int expectedSources;
    private transient long openedAt;

    private transient long emitted;
    private transient boolean idle;
    private transient long intervalMs;

    public SourceWatermarks(long outOfOrdernessMs, long idlenessMs, String batchEndKey) {
        if (outOfOrdernessMs < 0 || idlenessMs < 0) {
            throw new IllegalArgumentException("outOfOrdernessMs and idlenessMs must be >= 0");
        }
        this.outOfOrdernessMs = outOfOrdernessMs;
        this.idlenessMs = idlenessMs;
        this.batchEndKey = batchEndKey;
    }

    @Override
    public void open() throws Exception {
        super.open();
        sources = new HashMap<>();
        heard = new HashSet<>();
        expectedSources = inputChannels();
        openedAt = getProcessingTimeService().getCurrentProcessingTime();
        getMetricGroup().gauge("watermarkSources", (Gauge<Integer>) () -> expectedSources);
        emitted = Long.MIN_VALUE;
        idle = false;
        long interval = getExecutionConfig().getAutoWatermarkInterval();
        intervalMs = interval > 0 ? interval : DEFAULT_INTERVAL_MS;
        scheduleNext();
    }

    /** The number of source subtasks feeding this one: its task's input channels, or one
     * when the task has no input gate (the source is chained into it). */
    private int inputChannels() {
        int channels = 0;
        for (IndexedInputGate gate : getContainingTask().getEnvironment().getAllInputGates()) {
            channels += gate.getNumberOfInputChannels();
        }
        return Math.max(1, channels);
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row row = element.getValue();
        String key = (String) row.getField(0);
        int source = ((Number) row.getField(2)).intValue();
        long eventTime = ((Number) row.getField(3)).longValue();
        long now = getProcessingTimeService().getCurrentProcessingTime();
        long[] seen = sources.get(source);
        if (seen == null) {
            seen = new long[] {Long.MIN_VALUE, now, Long.MIN_VALUE};
            sources.put(source, seen);
            heard.add(source);
        }
        seen[1] = now;
        if (idle) {
            idle = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
        if (batchEndKey.equals(key)) {
            if (eventTime == Long.MAX_VALUE) {
                sources.remove(source);
            } else if (emitted != Long.MAX_VALUE) {
                emitIfAdvanced(now);
            }
            return;
        }
        Row out = Row.of(key, row.getField(1));
        if (eventTime == Long.MIN_VALUE) {
            output.collect(new StreamRecord<>(out));
            return;
        }
        if (eventTime > seen[0]) {
            seen[0] = eventTime;
        }
        output.collect(new StreamRecord<>(out, eventTime));
    }

    @Override
    public void onProcessingTime(long timestamp) throws Exception {
        if (emitted == Long.MAX_VALUE) {
            return;
        }
        emitIfAdvanced(getProcessingTimeService().getCurrentProcessingTime());
        scheduleNext();
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (mark.getTimestamp() == Long.MAX_VALUE && emitted != Long.MAX_VALUE) {
            emitted = Long.MAX_VALUE;
            output.emitWatermark(mark);
        }
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus watermarkStatus) {
        // This operator decides its own status from its sources' rows.
    }

    private void scheduleNext() {
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + intervalMs, this);
    }

    private void emitIfAdvanced(long now) {
        long smallestActive = Long.MAX_VALUE;
        long largest = Long.MIN_VALUE;
        boolean active = false;
        if (heard.size() < expectedSources && (idlenessMs == 0 || now - openedAt < idlenessMs)) {
            // A source not heard from yet: no bars, not idle.
            active = true;
            smallestActive = Long.MIN_VALUE;
        }
        for (long[] seen : sources.values()) {
            if (idlenessMs == 0 || now - seen[1] < idlenessMs) {
                active = true;
                if (seen[0] != Long.MIN_VALUE) {
                    seen[2] = Math.max(seen[2], seen[0] - outOfOrdernessMs - 1);
                }
                smallestActive = Math.min(smallestActive, seen[2]);
            }
            largest = Math.max(largest, seen[2]);
        }
        if (sources.isEmpty()) {
            return;
        }
        long watermark = active ? smallestActive : largest;
        if (watermark > emitted) {
            emitted = watermark;
            output.emitWatermark(new Watermark(watermark));
        }
        if (!active && !idle) {
            idle = true;
            output.emitWatermarkStatus(WatermarkStatus.IDLE);
        }
    }
}
